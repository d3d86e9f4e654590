"""The command line: the one error handler (each error family gives one line and its exit status,
never a traceback), help that shows every default, strict JSON from ``train``, Ctrl-C, and
``train`` and ``compare`` in a fast mode."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from minisage import cli
from minisage.cli import main
from minisage.errors import CheckpointError, GoldenFormatError, UsageError
from minisage.train import checkpoint, config_of, train


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
    assert "--steps must be >= 1" in _one_line(capsys.readouterr().err)
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
    assert main(["compare", "--task", "sort", "--steps", "10", "--seeds", "2", "--quiet",
                 "--out", str(out_dir)]) == 0
    table = capsys.readouterr().out
    assert "bert-adamw" in table and "adamw-sage" in table and "+-" in table
    figures = sorted(f for f in os.listdir(out_dir) if f.endswith(".png"))
    assert len(figures) >= 3
    for name in ("metrics.csv", "summary.json", "pruning.csv", "mechanism.csv", "layers.csv"):
        assert (out_dir / name).stat().st_size > 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["optimizers"]["adamw-sage"]["seeds"] == [0, 1]


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
    line = _one_line(err)
    assert line.startswith("minisage train: interrupted: stopped after step ")
    assert f"saved a checkpoint to {path}" in line and f"--resume {path}" in line
    saved = checkpoint.load(path)
    assert 0 < saved.step < 100000
    # the checkpoint holds a whole step: resuming continues from the next one
    config = replace(config_of(saved), steps=saved.step + 2)
    resumed = train(config, resume=saved)
    assert resumed.final["step"] == saved.step + 2
    assert np.isfinite(resumed.final["val_loss"])
