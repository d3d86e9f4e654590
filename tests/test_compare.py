"""minisage compare's protocol: tasks with a test split, settings with their provenance, tuning,
paired statistics, the recorder's exactness, and a small end-to-end comparison."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from minisage import compare as cmp
from minisage import plots, runtime
from minisage.tasks import WALK_STEP_PROBS, _random_walks, make_task, walk_bayes_accuracy
from minisage.train import TrainConfig, decile_means, train

TINY = dict(d_model=16, n_layers=1, n_heads=2, eval_every=5, eval_rows=64)


# ----- tasks --------------------------------------------------------------------------------------
def test_test_split_and_pretraining_are_shared_by_seeds_and_training_data_is_not():
    for name in ("sort", "finetune"):
        a, b = make_task(name, seed=0), make_task(name, seed=1)
        np.testing.assert_array_equal(a.test.ids, b.test.ids)
        assert not np.array_equal(a.train.ids, b.train.ids)
    a, b = make_task("finetune", seed=0), make_task("finetune", seed=3)
    np.testing.assert_array_equal(a.pretrain.train.ids, b.pretrain.train.ids)
    assert len(make_task("finetune", n_train=256).train) == 256


def test_modular_test_pairs_are_held_out_of_training():
    for seed in (0, 1):
        task = make_task("modular", seed=seed, n_train=100)
        train_pairs = {tuple(r) for r in task.train.ids}
        assert len(task.train) == 100
        assert not train_pairs & {tuple(r) for r in task.test.ids}
        assert not train_pairs & {tuple(r) for r in task.val.ids}
        assert len(task.train) + len(task.val) + len(task.test) == 17 * 17
    with pytest.raises(ValueError, match="n_train"):
        make_task("modular", n_train=289)


def test_walk_bayes_accuracy_matches_the_count_classifier_on_sampled_walks():
    # 200,000 walks: the exact value must lie within 4 standard errors of the sampled one
    walks, kinds = _random_walks(np.random.default_rng(5), 200_000, 16)
    steps = np.diff(walks, axis=1) % 16
    n1, n3 = (steps == 1).sum(axis=1), (steps == 3).sum(axis=1)
    guess = np.where(n1 > n3, 0, 1)
    correct = np.where(n1 == n3, 0.5, guess == kinds)
    exact = walk_bayes_accuracy(16)
    assert abs(correct.mean() - exact) < 4 * correct.std() / np.sqrt(len(correct))
    # one step: the best guess is right with probability max(p1, p3) + p2 / 2 (a tie)
    p1, p2, p3 = WALK_STEP_PROBS[0]
    assert walk_bayes_accuracy(2) == pytest.approx(max(p1, p3) + p2 / 2, abs=1e-15)


# ----- plumbing: beta3 reaches the optimizer; the recorder measures what the optimizer used -----
def test_two_runs_that_differ_only_in_beta3_differ():
    config = TrainConfig(task="sort", optimizer="adamw-sage", steps=8, record_every=0, **TINY)
    a, b = train(config), train(replace(config, beta3=0.9))
    assert {g["beta3"] for g in b.optimizer.param_groups if g["sage"]} == {0.9}
    assert a.history != b.history
    assert any(not np.array_equal(p.data, q.data)
               for p, q in zip(a.model.parameters(), b.model.parameters()))


@pytest.mark.parametrize("preset", ["adamw-sage", "adamax-sage", "adam-sage"])
def test_recorder_multiplier_is_the_optimizers_bit_for_bit(preset):
    seen = {}

    class Spy:  # asks the optimizer for its trace at step 6
        def on_gradients(self, step, model, optimizer):
            optimizer.record = step == 6

        def on_step_end(self, step, model, optimizer, loss):
            if step == 6:
                seen.update(optimizer.last_trace)

    config = TrainConfig(task="sort", optimizer=preset, steps=6, record_every=3, beta3=0.8,
                         clip_norm=0.0, **TINY)  # no global clipping: per-tensor clipping acts
    result = train(config, callbacks=[Spy()])
    recorder = result.recorder
    assert 6 in recorder.histograms
    names = [n for n, _ in recorder.states.items()]
    for key in ("lr_multiplier", "sensitivity_ema_hat"):
        mine = recorder.histograms[6][key]
        theirs = np.concatenate([seen[n][key].ravel() for n in names])
        np.testing.assert_array_equal(mine, theirs)


def test_recorder_names_a_non_finite_gradient_and_keeps_its_state():
    config = TrainConfig(task="sort", optimizer="adamw-sage", steps=2, record_every=1, **TINY)
    result = train(config)
    recorder, model = result.recorder, result.model
    before = recorder.state_dict()
    name, bad = next((n, p) for n, p in model.named_parameters() if n in recorder.states)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    bad.grad[0, 0] = np.nan
    with pytest.raises(FloatingPointError, match=f"non-finite gradient for parameter '{name}' "
                                                 r"\(1 of"):
        recorder.on_gradients(3, model, result.optimizer)
    after = recorder.state_dict()
    assert after["rows"] == before["rows"] and after["mechanism"] == before["mechanism"]
    for n, state in before["states"].items():
        assert after["states"][n]["step"] == state["step"] == 2
        assert np.array_equal(after["states"][n]["sensitivity_ema"], state["sensitivity_ema"])


def test_recorder_of_a_plain_run_measures_what_its_sage_pair_would():
    config = TrainConfig(task="sort", optimizer="bert-adamw", steps=4, record_every=2, **TINY)
    result = train(config)
    assert result.recorder.rule.name == "adamw-sage" and result.recorder.rule.hparams[
        "beta3"] == config.beta3
    # adamw-sage bias-corrects Ibar: at the first step Ihat = I, so r = 0 there
    first = result.recorder.mechanism[0]
    assert first["step"] == 2 and 0 <= first["r_median"]


def test_decile_means_by_rank():
    x = np.arange(20.0)[::-1]
    y = np.arange(20.0)
    assert decile_means(x, y) == [18.5, 16.5, 14.5, 12.5, 10.5, 8.5, 6.5, 4.5, 2.5, 0.5]


def test_concentration_of_known_values():
    values = {"a": np.array([0.0] * 5 + [1.0] * 4 + [91.0])}  # median 0.5: 5 entries below 0.05
    got = cmp.concentration(values)
    assert got["share_below_tenth_of_median"] == 0.5
    assert got["top10_share_of_total"] == pytest.approx(91 / 95)


# ----- statistics ---------------------------------------------------------------------------------
def test_paired_difference_and_test():
    base, other = [0.70, 0.72, 0.69, 0.71], [0.71, 0.74, 0.70, 0.71]
    d = np.subtract(other, base)
    got = cmp.paired(base, other)
    assert got["mean"] == pytest.approx(d.mean(), abs=1e-15)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert got["ci95"] == pytest.approx(half, rel=1e-12)
    t = d.mean() / (d.std(ddof=1) / 2)
    assert got["p_paired_t"] == pytest.approx(2 * stats.t.sf(abs(t), 3), rel=1e-10)
    one = cmp.paired([0.7], [0.8])
    assert np.isnan(one["ci95"]) and np.isnan(one["p_paired_t"])


# ----- settings and their provenance --------------------------------------------------------------
def test_settings_come_from_the_command_line_a_matching_record_or_the_defaults():
    base = cmp.default_config("sort", steps=40)
    record = {"protocol": cmp.protocol_of(base), "seeds": [1000],
              "selected": {"bert-adamw": {"lr": 3e-3}, "adamw-sage": {"lr": 1e-2, "beta3": 0.85}}}
    got = cmp.choose_settings(base, ["bert-adamw", "adamw-sage"], {}, record, "rec.json")
    assert got["adamw-sage"]["lr"] == 1e-2 and got["adamw-sage"]["beta3"] == 0.85
    assert "tuning record rec.json" in got["bert-adamw"]["selected_by"]
    given = {"adamw-sage": {"lr": 5e-4}}
    got = cmp.choose_settings(base, ["bert-adamw", "adamw-sage"], given, record, "rec.json")
    assert got["adamw-sage"] == {"lr": 5e-4, "beta3": 0.85,
                                 "selected_by": "given on the command line"}
    other = cmp.default_config("sort", steps=41)  # another protocol: the record does not apply
    got = cmp.choose_settings(other, ["bert-adamw"], {}, record, "rec.json")
    assert got["bert-adamw"]["lr"] == other.lr and "another protocol" in got["bert-adamw"][
        "selected_by"]
    assert "beta3" not in got["bert-adamw"]


def test_grid_extends_beyond_an_edge():
    scored = [{"lr": lr, "val_accuracy": acc, "val_loss": 1.0}
              for lr, acc in ((1e-3, 0.6), (3e-3, 0.7), (1e-2, 0.8))]
    assert cmp._extend(scored) == [{"lr": pytest.approx(3e-2)}]
    scored[1]["val_accuracy"] = 0.9
    assert cmp._extend(scored) == []
    sage = [{"lr": 1e-3, "beta3": 0.7, "val_accuracy": 0.9, "val_loss": 1.0},
            {"lr": 3e-3, "beta3": 0.7, "val_accuracy": 0.5, "val_loss": 1.0}]
    assert cmp._extend(sage) == [{"lr": 3.33e-4, "beta3": 0.7}]  # rounded to 3 digits


def test_tune_selects_on_validation_only_and_reports_every_point(monkeypatch):
    base = cmp.default_config("sort", steps=4, **TINY)
    evaluated = []
    original = cmp.evaluate

    def spy(model, task, split, *args, **kwargs):
        evaluated.append(split is task.test)
        return original(model, task, split, *args, **kwargs)

    monkeypatch.setattr(cmp, "evaluate", spy)
    monkeypatch.setattr(cmp, "PLAIN_LRS", (1e-3, 3e-3))
    monkeypatch.setattr(cmp, "MAX_EXTENSIONS", 0)
    record = cmp.tune(base, ["adamw"], seeds=(1000, 1001), log=lambda _: None)
    assert not any(evaluated)  # the test split is never evaluated while selecting
    assert [s["lr"] for s in record["scores"]["adamw"]] == [1e-3, 3e-3]
    best = max(record["scores"]["adamw"], key=lambda s: (s["val_accuracy"], -s["val_loss"]))
    assert record["selected"]["adamw"] == {"lr": best["lr"]}
    assert record["protocol"] == cmp.protocol_of(base) and record["seeds"] == [1000, 1001]


# ----- the whole comparison -----------------------------------------------------------------------
def test_compare_end_to_end_paired_on_shared_seeds(tmp_path):
    base = cmp.default_config("sort", steps=6, **TINY)
    settings = cmp.choose_settings(base, ["adamw", "adam-sage"], {"adam-sage": {"lr": 3e-3}},
                                   None, "")
    summary = cmp.compare(base, ["adamw", "adam-sage"], seeds=2, settings=settings,
                          out=tmp_path, log=lambda _: None)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["optimizers"]["adam-sage"]["lr"] == 3e-3
    assert saved["optimizers"]["adam-sage"]["selected_by"] == "given on the command line"
    acc = {n: summary["optimizers"][n]["test_accuracy"]["per_seed"] for n in ("adamw",
                                                                              "adam-sage")}
    diff = summary["paired"]["adam-sage"]["test_accuracy"]
    np.testing.assert_allclose(diff["per_seed"], np.subtract(acc["adam-sage"], acc["adamw"]))
    assert saved["bayes_accuracy"] == 1.0 and not saved["partial"]
    for figure in ("learning_curves", "mechanism", "sensitivity", "sensitivity_over_time"):
        assert (tmp_path / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"


def test_processes_do_not_change_the_numbers(tmp_path):
    # workers run with one BLAS thread, as the command line does: the same here (BLAS sums
    # in another order with another thread count, so float32 results would differ in the last bit)
    base = cmp.default_config("sort", steps=4, **TINY)
    jobs = [cmp.Job(replace(base, optimizer="adamw-sage", seed=s), report=False) for s in (0, 1)]
    with runtime.tuned(threads=1):
        inline, _ = cmp.run_jobs(jobs, processes=1)
    with cmp.Workers(2) as workers:
        spread, complete = cmp.run_jobs(jobs, workers)
        assert complete
        for a, b in zip(inline, spread):
            assert a["history"] == b["history"] and a["val"] == b["val"]
        # the same workers draw a figure (as compare does), from a call made in this process
        path = tmp_path / "curves.png"
        drawn = workers.submit(plots.learning_curves,
                               ({"adamw-sage": [r["history"] for r in spread]}, path))
        assert drawn() == str(path) and path.read_bytes()[:4] == b"\x89PNG"
        if hasattr(os, "nice"):  # and they yield the processor to this one
            assert workers.submit(os.nice, (0,))() == min(os.nice(0) + cmp.WORKER_NICENESS, 19)


def test_ctrl_c_keeps_the_finished_runs_and_marks_the_summary_partial(tmp_path, monkeypatch):
    real = cmp.run_job
    calls = []

    def interrupted_at_the_fifth(job):  # Ctrl-C arrives while the fifth run trains
        calls.append(job)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(cmp, "run_job", interrupted_at_the_fifth)
    base = cmp.default_config("sort", steps=3, **TINY)
    with pytest.raises(KeyboardInterrupt, match="4 finished runs"):
        cmp.compare(base, ["adamw", "adam-sage"], seeds=3, out=tmp_path, log=lambda _: None)
    # the SAGE runs (the longer ones) start first
    assert [(job.config.optimizer, job.config.seed) for job in calls] == [
        ("adam-sage", 0), ("adam-sage", 1), ("adam-sage", 2), ("adamw", 0), ("adamw", 1)]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["partial"] is True
    # seed 0 finished for both optimizers, seeds 1 and 2 for adam-sage only: the summary pairs
    # seed 0
    assert saved["optimizers"]["adamw"]["seeds"] == [0]
    assert len(saved["paired"]["adam-sage"]["test_accuracy"]["per_seed"]) == 1
    assert (tmp_path / "learning_curves.png").exists()


@pytest.mark.parametrize("steps, seeds", [(1, 1), (2, 2)])
def test_short_runs_and_one_seed_give_a_report_and_every_figure(tmp_path, steps, seeds):
    base = cmp.default_config("sort", steps=steps, **TINY)
    summary = cmp.compare(base, ["bert-adamw", "adamw-sage"], seeds=seeds, out=tmp_path,
                          log=lambda _: None)
    table = cmp.format_table(summary)
    assert "nan" not in table and ("CI n/a" in table) == (seeds == 1)
    for figure in ("learning_curves", "mechanism", "sensitivity", "sensitivity_over_time",
                   "multiplier_distribution"):
        assert (tmp_path / f"{figure}.png").stat().st_size > 5000
