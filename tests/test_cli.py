"""The command line: the one error handler (each error family gives one line and its exit status,
never a traceback), help that shows every default, strict JSON from ``train``, Ctrl-C, and
``train`` and ``compare`` in a fast mode."""

import argparse
import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from minisage import cli
from minisage.cli import main
from minisage.errors import CheckpointError, GoldenFormatError, UsageError
from minisage.train import checkpoint, config_of


def _run_cli(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "minisage", *argv], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "MINISAGE_DEBUG": ""})


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err.strip()


# ----- the one handler -------------------------------------------------------------------------
@pytest.mark.parametrize("error, status, text", [
    (UsageError("--steps must be >= 1, got 0"), 2, "error: --steps must be >= 1, got 0"),
    (ValueError("unknown preset 'lamb'"), 2, "error: unknown preset 'lamb'"),
    (CheckpointError("run.npz: not a zip archive"), 1, "error: run.npz: not a zip archive"),
    (GoldenFormatError("x.json: case 3\nbad 'step'"), 1, "error: x.json: case 3; bad 'step'"),
    (FileNotFoundError(2, "No such file or directory", "/no/such.npz"), 1,
     "error: /no/such.npz: No such file or directory"),
    (PermissionError(13, "Permission denied", "/root/run.npz"), 1,
     "error: /root/run.npz: Permission denied"),
    (IsADirectoryError(21, "Is a directory", "/tmp"), 1, "error: /tmp: Is a directory"),
    (OSError("disk full"), 1, "error: disk full"),
    (FloatingPointError("training loss became nan at step 3"), 1,
     "error: training loss became nan at step 3"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (KeyboardInterrupt("stopped after step 4"), 130, "interrupted: stopped after step 4"),
])
def test_each_error_family_is_one_line_with_its_exit_status(monkeypatch, capsys, error, status,
                                                            text):
    def fail(args):
        raise error

    monkeypatch.setattr(cli.golden, "run", fail)
    monkeypatch.delenv("MINISAGE_DEBUG", raising=False)
    assert main(["golden", "list"]) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert _one_line(captured.err) == f"minisage golden: {text}"


def test_a_closed_pipe_exits_quietly(monkeypatch, capsys):
    def fail(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli.golden, "run", fail)
    assert main(["golden", "list"]) == 1
    assert capsys.readouterr().err == ""


def test_a_bug_keeps_its_traceback_and_debug_reraises_user_errors(monkeypatch):
    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli.golden, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["golden", "list"])

    def user_error(args):
        raise UsageError("bad value")

    monkeypatch.setattr(cli.golden, "run", user_error)
    monkeypatch.setenv("MINISAGE_DEBUG", "1")
    with pytest.raises(UsageError, match="bad value"):
        main(["golden", "list"])


def test_argument_errors_and_no_command_exit_2(capsys):
    assert main(["train", "--steps", "many"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("minisage train: error: argument --steps: invalid int value: 'many'")
    assert main(["golden", "export"]) == 2  # DIR missing: the action's own parser says so
    assert _one_line(capsys.readouterr().err).startswith("minisage golden export: error:")
    assert main(["no-such-command"]) == 2
    assert _one_line(capsys.readouterr().err).startswith("minisage: error: argument COMMAND")
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage: minisage" in captured.err and "train" in captured.err


def test_real_user_errors_end_to_end(tmp_path, capsys):
    assert main(["compare", "--optimizers", "nope", "--quiet"]) == 2
    assert "nope" in _one_line(capsys.readouterr().err)
    assert main(["train", "--steps", "0", "--quiet"]) == 2
    assert "--steps must be an integer >= 1, got 0" in _one_line(capsys.readouterr().err)
    assert main(["train", "--resume", str(tmp_path / "missing.npz"), "--quiet"]) == 1
    assert "missing.npz: No such file or directory" in _one_line(capsys.readouterr().err)
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 1
    assert _one_line(capsys.readouterr().err).endswith(f"{tmp_path}: Is a directory")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"garbage")
    assert main(["train", "--resume", str(broken), "--quiet"]) == 1
    assert "broken.npz: not a .npz checkpoint" in _one_line(capsys.readouterr().err)
    # in a fresh process too: one line, no traceback
    result = _run_cli("train", "--resume", "/nonexistent.npz", "--quiet")
    assert result.returncode == 1 and result.stdout == ""
    assert _one_line(result.stderr) == ("minisage train: error: /nonexistent.npz: No such file "
                                        "or directory")


# ----- help ----------------------------------------------------------------------------------
def _parsers(parser):
    """Every parser reachable from ``parser`` (commands and their actions)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_flag_has_help_and_help_shows_every_default():
    for parser in _parsers(cli.build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            assert action.help, f"{parser.prog} {name} has no help text"
            if action.default is None:  # nothing to show: the text must say what happens
                assert "default" in action.help or action.required, (
                    f"{parser.prog} {name}: help does not state the default")
            elif action.default is not False and action.default != argparse.SUPPRESS:
                assert f"default: {action.default}" in " ".join(text.split()), (
                    f"{parser.prog} {name}: --help does not show its default "
                    f"{action.default!r}")


# ----- train ---------------------------------------------------------------------------------
def test_train_prints_strict_json_and_messages_on_stderr(tmp_path, capsys):
    path = tmp_path / "c.npz"
    assert main(["train", "--task", "sort", "--steps", "6", "--eval-every", "3", "--quiet",
                 "--optimizer", "adamw-sage", "--save", str(path)]) == 0
    captured = capsys.readouterr()

    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    report = json.loads(captured.out, parse_constant=refuse)  # all of stdout is the JSON
    assert report["final"]["step"] == 6 and report["config"]["optimizer"] == "adamw-sage"
    assert f"saved checkpoint to {path}" in captured.err
    saved = checkpoint.load(path)
    assert saved.step == 6 and config_of(saved).steps == 6


def test_compare_fast(tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    assert main(["compare", "--task", "sort", "--steps", "4", "--seeds", "2", "--quiet",
                 "--jobs", "1", "--out", str(out_dir)]) == 0  # processes: test_compare.py
    table = capsys.readouterr().out
    assert "bert-adamw" in table and "adamw-sage" in table and "+-" in table
    figures = sorted(f for f in os.listdir(out_dir) if f.endswith(".png"))
    assert len(figures) >= 3
    for name in ("metrics.csv", "summary.json", "pruning.csv", "mechanism.csv", "layers.csv",
                 "movement.csv"):
        assert (out_dir / name).stat().st_size > 0
    with open(out_dir / "movement.csv") as f:  # ten deciles per run: 2 optimizers x 2 seeds
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["decile_of_first_sensitivity"] for r in rows} == {
        str(i) for i in range(1, 11)} and all(float(r["mean_abs_change"]) >= 0 for r in rows)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["optimizers"]["adamw-sage"]["seeds"] == [0, 1]


#: a small model: the Ctrl-C and resume tests train for seconds
SMALL = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--schedule", "constant"]


def _interrupt_once_started(*argv):
    """Start ``minisage train *argv``, wait for its start line (printed once Ctrl-C is deferred
    to the end of a step, so that a signal sent after it can only stop the run between two steps,
    however loaded the machine), send Ctrl-C; returns (status, start line, stdout, stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "minisage", "train", *argv],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "MINISAGE_DEBUG": ""})
    try:
        start = process.stderr.readline()
        assert start.startswith("minisage train: "), start + process.stderr.read()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    return process.returncode, start, out, err


def _final(capsys) -> dict:
    return json.loads(capsys.readouterr().out)["final"]


def test_ctrl_c_in_training_saves_a_checkpoint_that_resumes_bit_for_bit(tmp_path, capsys):
    path = tmp_path / "run.npz"
    status, start, out, err = _interrupt_once_started(
        "--task", "sort", "--steps", "100000", "--eval-every", "2", *SMALL, "--save", str(path))
    assert "sort with bert-adamw, 100000 steps" in start and f"saves the run to {path}" in start
    assert status == 130 and out == "", err
    line = _one_line(err)
    assert line.startswith("minisage train: interrupted: stopped training after step ")
    assert line.endswith(f"of 100000; saved a checkpoint to {path} (continue with: minisage "
                         f"train --resume {path})")
    saved = checkpoint.load(path)
    assert saved.stage == "train" and 1 <= saved.step < 100000
    # --steps extends a constant-schedule run: exactly the run that asked for that many steps
    steps = str(saved.step + 2)
    assert main(["train", "--resume", str(path), "--steps", steps, "--quiet"]) == 0
    resumed = _final(capsys)
    assert main(["train", "--task", "sort", "--steps", steps, "--eval-every", "2", *SMALL,
                 "--quiet"]) == 0
    assert resumed == _final(capsys) and resumed["step"] == saved.step + 2


def test_ctrl_c_in_pretraining_saves_the_stage_and_resume_finishes_both(tmp_path, capsys):
    path = tmp_path / "pre.npz"
    run = ["--task", "finetune", "--steps", "2", *SMALL]
    status, start, _, err = _interrupt_once_started(*run, "--pretrain-steps", "100000",
                                                    "--save", str(path))
    assert "finetune with bert-adamw, 2 steps after 100000 pretraining steps" in start
    assert status == 130
    assert _one_line(err).startswith("minisage train: interrupted: stopped pretraining after "
                                     "step ")
    saved = checkpoint.load(path)
    assert saved.stage == "pretrain" and 1 <= saved.step < 100000
    assert config_of(saved).steps == 2  # the run's config, not the stage's
    # pretraining resumes where it stopped (its step count may change: constant schedule), then
    # fine-tuning runs: the numbers of the run that was never interrupted
    pretrain = str(saved.step + 3)
    assert main(["train", "--resume", str(path), "--pretrain-steps", pretrain, "--quiet"]) == 0
    resumed = _final(capsys)
    assert main([*["train", *run], "--pretrain-steps", pretrain, "--quiet"]) == 0
    assert resumed == _final(capsys) and resumed["step"] == 2


def test_resume_refuses_contradicting_flags_and_extends_only_constant_schedules(tmp_path,
                                                                               capsys):
    constant, linear = tmp_path / "constant.npz", tmp_path / "linear.npz"
    base = ["train", "--task", "sort", "--steps", "3", "--d-model", "16", "--n-layers", "1",
            "--n-heads", "2", "--quiet"]
    assert main([*base, "--schedule", "constant", "--save", str(constant)]) == 0
    assert main([*base, "--save", str(linear)]) == 0
    capsys.readouterr()
    refused = {
        ("--optimizer", "adamw"): f"--optimizer is 'adamw', but {constant} was saved with "
                                  "'bert-adamw': a resumed run keeps its settings (only steps "
                                  "may change)",
        ("--lr", "0.5"): f"--lr is 0.5, but {constant} was saved with 0.001: a resumed run keeps "
                         "its settings (only steps may change)",
        ("--task", "modular"): f"--task is 'modular', but {constant} was saved with 'sort': a "
                               "resumed run keeps its settings (only steps may change)",
        (): f"{constant} holds the whole run (step 3 of 3): nothing to resume; give more steps "
            "(> 3) to extend it",
        ("--steps", "2"): f"--steps is 2, but {constant} is already at step 3: give more than "
                          "that",
    }
    for flags, message in refused.items():
        assert main(["train", "--resume", str(constant), *flags, "--quiet"]) == 2, flags
        assert _one_line(capsys.readouterr().err) == f"minisage train: error: {message}"
    assert main(["train", "--resume", str(linear), "--steps", "5", "--quiet"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"minisage train: error: --steps is 5, but {linear} was saved with 3: the linear "
        "schedule sets every step's lr from the total number of steps, so only a run with the "
        "constant schedule can be extended")
    # a flag that agrees with the checkpoint is no contradiction
    assert main(["train", "--resume", str(constant), "--lr", "0.001", "--steps", "4",
                 "--quiet"]) == 0
    assert _final(capsys)["step"] == 4


@pytest.mark.parametrize("flags", [
    ["--steps", "1"],
    ["--steps", "2", "--eval-every", "100", "--record-every", "100"],
    ["--steps", "3", "--eval-every", "0", "--record-every", "2"],
    ["--steps", "1", "--batch-size", "5000", "--eval-rows", "1"],
])
def test_short_and_edge_runs_finish(flags, capsys):
    assert main(["train", "--task", "sort", *SMALL, *flags, "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["final"]["step"] == report["config"]["steps"] == int(flags[1])
