"""Training: tasks learn, runs are deterministic, checkpoints resume bit for bit, callbacks see
every step, the SAGE split, the recorder, pruning, and the statistics over seeds."""

import json
import math

import numpy as np
import pytest
from scipy.special import betainc

from minisage import spec
from minisage.errors import CheckpointError
from minisage.nn import Transformer
from minisage.tasks import IGNORE, TASKS, make_task
from minisage.train import (
    ConfigError,
    TrainConfig,
    batch_for_step,
    build_optimizer,
    checkpoint,
    config_of,
    evaluate,
    mean_ci,
    nan_to_none,
    pruning_curve,
    restore_checkpoint,
    save_checkpoint,
    train,
    welch_p,
)

FAST = dict(d_model=16, n_layers=1, n_heads=2, eval_every=20, record_every=5)


@pytest.mark.parametrize("name, stage, size", [
    ("sort", "task", FAST), ("modular", "task", FAST), ("finetune", "task", FAST),
    # masked-LM pretraining sits on the uniform plateau (ln 16) for ~100 steps at any size;
    # the default size leaves it within 250 steps
    ("finetune", "pretrain", {**FAST, "d_model": 32, "n_layers": 2, "n_heads": 4}),
])
def test_each_task_training_loss_falls(name, stage, size):
    # finetune from scratch (no pretraining) learns within 150 steps on a small labeled set
    task = make_task(name, n_train=256 if name == "finetune" else None)
    task = task.pretrain if stage == "pretrain" else task
    steps = 250 if stage == "pretrain" else 150
    config = TrainConfig(task=name, optimizer="adamw", lr=3e-3, steps=steps, schedule="constant",
                         **{**size, "eval_every": steps, "record_every": 0, "eval_rows": 512})
    # the same training rows as the run's final evaluation (its first eval_rows)
    untrained = evaluate(Transformer(config.model_config(task), seed=0), task,
                         task.train.head(config.eval_rows))
    result = train(config, task)
    assert result.final["train_loss"] < 0.9 * untrained["loss"], (result.final, untrained)


def test_tasks_are_seeded_and_well_formed():
    for name in TASKS:
        a, b, c = make_task(name, seed=1), make_task(name, seed=1), make_task(name, seed=2)
        np.testing.assert_array_equal(a.train.ids, b.train.ids)
        assert not np.array_equal(a.train.ids, c.train.ids)
        assert a.train.ids.max() < a.vocab_size and a.train.ids.shape[1] == a.seq_len
    sort = make_task("sort")
    answers = sort.train.targets[sort.train.targets != IGNORE].reshape(len(sort.train), -1)
    np.testing.assert_array_equal(answers, np.sort(sort.train.ids[:, :answers.shape[1]], axis=1))
    modular = make_task("modular")
    a, b = modular.train.ids[:, 1], modular.train.ids[:, 2]
    np.testing.assert_array_equal(modular.train.targets, (a + b) % 17)
    held_out = {tuple(r) for r in modular.val.ids} & {tuple(r) for r in modular.train.ids}
    assert not held_out  # no pair is in both splits


def test_same_seed_identical_numbers_other_seed_different():
    config = TrainConfig(task="sort", optimizer="adamw-sage", steps=20, **FAST)
    a, b = train(config), train(config)
    assert a.history == b.history
    for (_, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    c = train(TrainConfig(task="sort", optimizer="adamw-sage", steps=20, seed=1, **FAST))
    assert c.history != a.history


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    config = TrainConfig(task="sort", optimizer="adamw-sage", steps=30, **FAST)
    full = train(config)
    # The same run stopped after 12 steps, saved, loaded and continued to 30.
    short = train(config, stop_at=12)
    path = tmp_path / "run.npz"
    save_checkpoint(path, config, short.model, short.optimizer, short.recorder, short.history,
                    step=12)
    saved = checkpoint.load(path)
    assert config_of(saved) == config and saved.step == 12
    resumed = train(config, resume=saved)
    assert resumed.history == full.history
    for (_, pa), (_, pb) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    assert resumed.recorder.rows == full.recorder.rows
    for step, sample in full.recorder.histograms.items():
        np.testing.assert_array_equal(sample["lr_multiplier"],
                                      resumed.recorder.histograms[step]["lr_multiplier"])


def test_corrupt_or_mismatched_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="broken.npz"):
        checkpoint.load(bad)
    config = TrainConfig(task="sort", optimizer="adamw", steps=2, **FAST)
    result = train(config)
    path = tmp_path / "ok.npz"
    save_checkpoint(path, config, result.model, result.optimizer, result.recorder,
                    result.history, step=2)
    other = TrainConfig(task="sort", optimizer="adamw", steps=4, **{**FAST, "d_model": 32})
    with pytest.raises(ConfigError, match="resume: d_model is 32, but .*ok.npz was saved with 16"):
        train(other, resume=checkpoint.load(path))
    bigger = Transformer(other.model_config(make_task("sort")))
    with pytest.raises(CheckpointError, match="ok.npz: does not match this model"):
        restore_checkpoint(checkpoint.load(path), bigger, build_optimizer(bigger, other), None, [])
    saved = checkpoint.load(path)
    saved.config["learning_rate"] = 0.1  # not a TrainConfig field
    with pytest.raises(CheckpointError, match="ok.npz.*learning_rate"):
        config_of(saved)


def test_sage_groups_select_exactly_attention_and_feed_forward():
    task = make_task("sort")
    config = TrainConfig(task="sort", optimizer="adamw-sage", **FAST)
    model = Transformer(config.model_config(task))
    optimizer = build_optimizer(model, config)
    ids = {id(p): n for n, p in model.named_parameters()}
    sage = {ids[id(p)] for g in optimizer.param_groups if g.get("sage") for p in g["params"]}
    expected = {n for n, _ in model.named_parameters()
                if ".attention.self." in n or ".attention.output.dense." in n
                or ".intermediate.dense." in n or (".output.dense." in n)}
    assert sage == expected
    assert all(n.startswith("blocks.") for n in sage)
    assert not any("norm" in n or "embeddings" in n or "head" in n for n in sage)


def test_recorder_quantiles_are_ordered_and_match_definitions():
    config = TrainConfig(task="sort", optimizer="bert-adamw", steps=10, **FAST)
    result = train(config)
    rows = result.recorder.rows
    assert {r["step"] for r in rows} == {5, 10}
    for r in rows:
        assert r["q05"] <= r["q25"] <= r["q50"] <= r["q75"] <= r["q95"]
        if r["quantity"] == "lr_multiplier":
            # without bias correction r lies in [0, max(1, b3/(1-b3))] = [0, 3] at b3 = 0.75
            assert 0 <= r["q05"] and r["q95"] <= 3 + 1e-9


def test_pruning_curve_endpoints_and_model_restored():
    config = TrainConfig(task="modular", optimizer="adamw", steps=40, lr=3e-3, **FAST)
    result = train(config)
    task = make_task("modular")
    before = result.model.state_dict()
    curve = pruning_curve(result.model, task, (0.0, 1.0), "magnitude")
    assert curve[0]["val_accuracy"] == pytest.approx(evaluate(result.model, task,
                                                               task.val)["accuracy"])
    for name, value in result.model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    assert len(curve) == 2 and curve[1]["fraction"] == 1.0


def test_every_preset_trains_one_step():
    for preset in spec.presets():
        lr = 0.01 if preset != "sgd" else 0.1
        result = train(TrainConfig(task="sort", optimizer=preset, steps=2, lr=lr, **FAST))
        assert np.isfinite(result.final["val_loss"])


@pytest.mark.parametrize("steps, eval_every, record_every, rows, records", [
    (1, 25, 10, [1], []),             # one step: evaluated at the last, nothing recorded
    (1, 0, 1, [1], [1]),              # eval_every 0: only the last step; one record
    (2, 100, 1, [2], [1, 2]),         # both periods longer than (or equal to) the run
    (3, 2, 0, [2, 3], None),          # recorder off
])
def test_short_runs_evaluate_their_last_step_and_record_what_they_can(steps, eval_every,
                                                                       record_every, rows,
                                                                       records):
    config = TrainConfig(task="sort", optimizer="adamw-sage", steps=steps,
                         **{**FAST, "eval_every": eval_every, "record_every": record_every})
    result = train(config)
    assert [row["step"] for row in result.history] == rows and result.final["step"] == steps
    if records is None:
        assert result.recorder is None
    else:
        assert sorted({r["step"] for r in result.recorder.rows}) == records
        assert [m["step"] for m in result.recorder.mechanism] == records
        assert steps in result.recorder.histograms  # the last step is always sampled


def test_batches_depend_only_on_seed_and_step():
    task = make_task("sort")
    a = batch_for_step(task, 3, 200, 32)
    b = batch_for_step(task, 3, 200, 32)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], batch_for_step(task, 3, 201, 32)[0])


# ----- callbacks -------------------------------------------------------------------------------
class Log:
    """A callback that writes ``(step, name, event)`` into ``events`` for each call."""

    def __init__(self, name, events):
        self.name, self.events = name, events

    def on_gradients(self, step, model, optimizer):
        self.events.append((step, self.name, "gradients"))

    def on_step_end(self, step, model, optimizer, loss):
        self.events.append((step, self.name, "step_end"))


class EndOnly:
    """A callback with only one of the two methods."""

    def __init__(self, events):
        self.events = events

    def on_step_end(self, step, model, optimizer, loss):
        self.events.append((step, "end-only", "step_end"))


def test_callbacks_are_called_once_per_step_in_order_and_change_nothing():
    config = TrainConfig(task="sort", optimizer="adamw-sage", steps=6, **FAST)
    events = []
    result = train(config, callbacks=[Log("a", events), Log("b", events), EndOnly(events)])
    expected = []
    for step in range(1, 7):
        expected += [(step, "a", "gradients"), (step, "b", "gradients"),
                     (step, "a", "step_end"), (step, "b", "step_end"),
                     (step, "end-only", "step_end")]
    assert events == expected
    # callbacks that only look change no number; the recorder (the first callback) still records
    plain = train(config)
    assert result.history == plain.history and result.recorder.rows == plain.recorder.rows
    assert {r["step"] for r in result.recorder.rows} == {5}


def test_on_gradients_sees_the_clipped_gradients_before_the_update():
    """Plain SGD at a constant lr without decay updates p <- p - lr g, so after each step the
    parameters must be exactly what the callback saw minus lr times the gradient it saw: it saw
    the parameters before the update and the very gradients the optimizer used, clipped."""
    lr, clip = 0.5, 0.01
    config = TrainConfig(task="sort", optimizer="sgd", lr=lr, schedule="constant",
                         weight_decay=0.0, clip_norm=clip, steps=4,
                         **{**FAST, "eval_every": 4, "record_every": 0})

    class Check:
        def __init__(self):
            self.seen, self.norms, self.losses, self.checked = {}, [], [], 0

        def on_gradients(self, step, model, optimizer):
            self.seen = {n: (p.data.copy(), p.grad.copy()) for n, p in model.named_parameters()}
            self.norms.append(math.sqrt(sum(np.sum(g * g) for _, g in self.seen.values())))

        def on_step_end(self, step, model, optimizer, loss):
            for name, p in model.named_parameters():
                data, grad = self.seen[name]
                np.testing.assert_array_equal(p.data, data - lr * grad, err_msg=name)
                self.checked += 1
            self.losses.append(loss)

    check = Check()
    result = train(config, callbacks=[check])
    assert check.checked == 4 * len(result.model.parameters())
    # clipped to clip * total / (total + 1e-6) (torch's rule): within 1e-6 of the bound here
    assert all(clip * (1 - 1e-5) <= norm <= clip for norm in check.norms), check.norms
    assert check.losses[-1] == result.final["train_loss_batch"]


def test_sage_patterns_choose_which_parameters_get_sage():
    task = make_task("sort")
    config = TrainConfig(task="sort", optimizer="adamw-sage", steps=3, **FAST)
    model = Transformer(config.model_config(task))
    names = {n for n, _ in model.named_parameters()}

    def sage_names(optimizer):
        return {n for g in optimizer.param_groups if g["sage"] for n in g["names"]}

    assert sage_names(build_optimizer(model, config, sage_patterns=("",))) == names
    assert sage_names(build_optimizer(model, config, sage_patterns=())) == set()
    with pytest.raises(ValueError, match="no SAGE variant"):
        build_optimizer(model, TrainConfig(optimizer="adamw"), sage_patterns=("",))
    # SAGE never moves an exactly-zero entry: on every parameter it freezes the LayerNorm
    # biases (initialised to 0); the official split leaves them to the plain rule
    norm_biases = [n for n in names if n.endswith("norm.bias")]
    everywhere = dict(train(config, sage_patterns=("",)).model.named_parameters())
    official = dict(train(config).model.named_parameters())
    assert norm_biases and not any(everywhere[n].data.any() for n in norm_biases)
    assert all(official[n].data.any() for n in norm_biases)


# ----- statistics over seeds ---------------------------------------------------------------------
def test_mean_ci_and_welch_p_match_hand_values():
    # Student t quantile t(0.975, df=2) = 4.302652729749464 (tables: 4.303)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-12)
    assert math.isnan(mean_ci([5.0])[1])
    # Welch: t = (2 - 5) / sqrt(1/3 + 1/3), df = 4; two-sided p = I_{df/(df+t^2)}(df/2, 1/2)
    t, df = -3 / math.sqrt(2 / 3), 4.0
    assert welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(betainc(df / 2, 0.5, df / (df + t * t)),
                                                          rel=1e-10)
    assert math.isnan(welch_p([1, 1], [2, 2])) and math.isnan(welch_p([1], [2, 3]))


def test_nan_to_none_makes_strict_json():
    value = {"a": [float("nan"), 1.5, float("inf")], "b": {"c": float("-inf")}, "d": (2, "x")}
    assert json.dumps(nan_to_none(value), allow_nan=False) == (
        '{"a": [null, 1.5, null], "b": {"c": null}, "d": [2, "x"]}')
