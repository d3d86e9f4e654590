"""Training: tasks learn, runs are deterministic, checkpoints resume bit for bit, the SAGE split,
the recorder, pruning, and the CLI in a fast mode."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minisage import checkpoint, spec
from minisage.cli import main
from minisage.nn import Transformer
from minisage.tasks import IGNORE, TASKS, make_task
from minisage.train import (
    TrainConfig,
    batch_for_step,
    build_optimizer,
    evaluate,
    pruning_curve,
    train,
)

FAST = dict(d_model=16, n_layers=1, n_heads=2, eval_every=20, record_every=5)


@pytest.mark.parametrize("name, stage, size", [
    ("sort", "task", FAST), ("modular", "task", FAST), ("finetune", "task", FAST),
    # masked-LM pretraining sits on the uniform plateau (ln 16) for ~100 steps at any size;
    # the default size leaves it within 250 steps
    ("finetune", "pretrain", {**FAST, "d_model": 32, "n_layers": 2, "n_heads": 4}),
])
def test_each_task_training_loss_falls(name, stage, size):
    task = make_task(name)
    task = task.pretrain if stage == "pretrain" else task
    steps = 250 if stage == "pretrain" else 150
    config = TrainConfig(task=name, optimizer="adamw", lr=3e-3, steps=steps, schedule="constant",
                         **{**size, "eval_every": steps, "record_every": 0})
    untrained = evaluate(Transformer(config.model_config(task), seed=0), task, task.train)
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
    checkpoint.save(path, config, short.model, short.optimizer, short.recorder, short.history,
                    step=12)
    resumed = train(config, resume=checkpoint.load(path))
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
    with pytest.raises(checkpoint.CheckpointError, match="broken.npz"):
        checkpoint.load(bad)
    config = TrainConfig(task="sort", optimizer="adamw", steps=2, **FAST)
    result = train(config)
    path = tmp_path / "ok.npz"
    checkpoint.save(path, config, result.model, result.optimizer, result.recorder,
                    result.history, step=2)
    other = TrainConfig(task="sort", optimizer="adamw", steps=4, **{**FAST, "d_model": 32})
    with pytest.raises(checkpoint.CheckpointError, match="ok.npz"):
        train(other, resume={**checkpoint.load(path), "config": other})


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


def test_cli_train_and_compare_fast(tmp_path, capsys):
    assert main(["train", "--task", "sort", "--steps", "6", "--eval-every", "3", "--quiet",
                 "--optimizer", "adamw-sage", "--save", str(tmp_path / "c.npz")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[:out.rindex("}") + 1])["final"]["step"] == 6
    out_dir = tmp_path / "cmp"
    assert main(["compare", "--task", "sort", "--steps", "10", "--seeds", "2", "--quiet",
                 "--out", str(out_dir)]) == 0
    table = capsys.readouterr().out
    assert "bert-adamw" in table and "adamw-sage" in table and "+-" in table
    figures = sorted(f for f in os.listdir(out_dir) if f.endswith(".png"))
    assert len(figures) >= 3
    for name in ("metrics.csv", "summary.json", "pruning.csv", "sensitivity.csv"):
        assert (out_dir / name).stat().st_size > 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["optimizers"]["adamw-sage"]["seeds"] == 2


def test_cli_user_errors_are_one_line(capsys):
    assert main(["compare", "--optimizers", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err and err.count("\n") == 1
    result = subprocess.run([sys.executable, "-m", "minisage", "train", "--resume",
                             "/nonexistent.npz", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 2 and "nonexistent.npz" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_preset_trains_one_step():
    for preset in spec.presets():
        lr = 0.01 if preset != "sgd" else 0.1
        result = train(TrainConfig(task="sort", optimizer=preset, steps=2, lr=lr, **FAST))
        assert np.isfinite(result.final["val_loss"])


def test_batches_depend_only_on_seed_and_step():
    task = make_task("sort")
    a = batch_for_step(task, 3, 200, 32)
    b = batch_for_step(task, 3, 200, 32)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], batch_for_step(task, 3, 201, 32)[0])


def test_ctrl_c_saves_a_checkpoint_between_steps(tmp_path):
    path = tmp_path / "run.npz"
    process = subprocess.Popen(
        [sys.executable, "-m", "minisage", "train", "--task", "sort", "--steps", "100000",
         "--eval-every", "100000", "--quiet", "--save", str(path)],
        stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # start-up plus a few dozen steps
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted: saved a checkpoint" in err and str(path) in err
    saved = checkpoint.load(path)
    assert 0 < saved["step"] < 100000
    # the checkpoint holds a whole step: resuming continues from the next one
    config = TrainConfig(**{**saved["config"].__dict__, "steps": saved["step"] + 2})
    resumed = train(config, resume={**saved, "config": config})
    assert resumed.final["step"] == saved["step"] + 2
