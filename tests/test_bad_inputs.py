"""Every bad input a user might give, on the command line and to the library, gets one clear line
(the value, the allowed range, the file) before any work is done: the command line prints it on
stderr without a traceback and exits 2 for a usage error, 1 for a failure; the library raises the
error, with the same text, and changes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from minisage import golden, optim, spec
from minisage.cli import main
from minisage.cli import train as cli_train
from minisage.errors import CheckpointError, GoldenFormatError, UsageError
from minisage.files import check_writable
from minisage.golden import generate
from minisage.nn import Parameter, TransformerConfig
from minisage.tasks import make_task
from minisage.train import (
    ConfigError,
    TrainConfig,
    checkpoint,
    pretrain_config,
    pretrained_state,
    save_checkpoint,
    train,
)

SMALL = dict(task="sort", d_model=16, n_layers=1, n_heads=2, record_every=0)
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="/proc takes no new files on Linux")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths the table refers to: {tmp} a folder, {file} a plain file, {garbage} not a
    checkpoint, {const} a whole 3-step constant-schedule run, {linear} a linear-schedule run
    stopped after step 2 of 4, {pre} a pretraining checkpoint."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "file").write_text("not a folder")
    (tmp / "garbage.npz").write_bytes(b"garbage")
    const = TrainConfig(steps=3, schedule="constant", **SMALL)
    result = train(const)
    save_checkpoint(tmp / "const.npz", const, result.model, result.optimizer, None,
                    result.history, step=3)
    linear = TrainConfig(steps=4, **SMALL)
    result = train(linear, stop_at=2)
    save_checkpoint(tmp / "linear.npz", linear, result.model, result.optimizer, None,
                    result.history, step=2)
    run = TrainConfig(**{**SMALL, "task": "finetune", "steps": 2, "pretrain_steps": 3})
    stage = train(pretrain_config(run), make_task("finetune").pretrain, stop_at=1)
    save_checkpoint(tmp / "pre.npz", run, stage.model, stage.optimizer, None, stage.history,
                    step=1, stage="pretrain")
    return {"tmp": str(tmp), "file": str(tmp / "file"), "garbage": str(tmp / "garbage.npz"),
            "const": str(tmp / "const.npz"), "linear": str(tmp / "linear.npz"),
            "pre": str(tmp / "pre.npz")}


BETA3_ZERO = ("must be in (0, 1), got 0.0: at beta3 = 0 the average Ibar is each step's own I, "
              "so U = |I - Ibar| = 0 and r = 0: no SAGE entry would ever move")
KEEPS = "a resumed run keeps its settings (only steps may change)"
PRESETS = ", ".join(spec.presets())

#: (command line, exit status, the one line on stderr after "minisage <command>: error: ")
COMMAND_LINE = [
    ("train --steps 0", 2, "--steps must be an integer >= 1, got 0"),
    ("train --steps -1", 2, "--steps must be an integer >= 1, got -1"),
    ("train --steps many", 2, "argument --steps: invalid int value: 'many' (see minisage train "
                              "--help)"),
    ("train --steps 2.5", 2, "argument --steps: invalid int value: '2.5' (see minisage train "
                             "--help)"),
    ("train --lr 0", 2, "--lr must be a number in (0, inf), got 0.0"),
    ("train --lr=-1e-3", 2, "--lr must be a number in (0, inf), got -0.001"),
    ("train --lr -1e-3", 2, "argument --lr: expected one argument (a value that starts with '-' "
                            "is written --flag=-1e-3) (see minisage train --help)"),
    ("train --lr nan", 2, "--lr must be a number in (0, inf), got nan"),
    ("train --lr 1e400", 2, "--lr must be a number in (0, inf), got inf"),
    ("train --beta3 0", 2, f"--beta3 {BETA3_ZERO}"),
    ("train --beta3 1", 2, "--beta3 must be in (0, 1), got 1.0"),
    ("train --batch-size 0", 2, "--batch-size must be an integer >= 1, got 0"),
    ("train --eval-every -1", 2, "--eval-every must be an integer >= 0 (0: only at the last "
                                 "step), got -1"),
    ("train --eval-rows 0", 2, "--eval-rows must be an integer >= 1, got 0"),
    ("train --record-every -5", 2, "--record-every must be an integer >= 0 (0: off), got -5"),
    ("train --warmup 1", 2, "--warmup must be a fraction of the steps in [0, 1), got 1.0"),
    ("train --weight-decay -0.1", 2, "--weight-decay must be a number in [0, inf), got -0.1"),
    ("train --clip-norm -1", 2, "--clip-norm must be a number in [0, inf) (0: off), got -1.0"),
    ("train --d-model 30", 2, "--d-model must be divisible by n_heads (4), got 30"),
    ("train --n-heads 0", 2, "--n-heads must be an integer >= 1, got 0"),
    ("train --n-layers 0", 2, "--n-layers must be an integer >= 1, got 0"),
    ("train --seed -1", 2, "--seed must be an integer >= 0, got -1"),
    ("train --labels 0", 2, "--labels must be an integer >= 1 (or None: the task's default), "
                            "got 0"),
    ("train --task modular --labels 1000", 2, "modular: n_train must be < 246 (of 289 pairs, 43 "
                                              "are validation and at least one is test), got "
                                              "1000"),
    ("train --pretrain-steps -1", 2, "--pretrain-steps must be an integer >= 0 (0: none), got "
                                     "-1"),
    ("train --pretrain-lr 0", 2, "--pretrain-lr must be a number in (0, inf), got 0.0"),
    ("train --optimizer lamb", 2, "argument --optimizer: invalid choice: 'lamb' (choose from "),
    ("train --dtype float16", 2, "argument --dtype: invalid choice: 'float16' (choose from "),
    ("train --schedule step", 2, "argument --schedule: invalid choice: 'step' (choose from "),
    ("train --task mnist", 2, "argument --task: invalid choice: 'mnist' (choose from "),
    ("train --bogus 3", 2, "unrecognized arguments: --bogus 3 (see minisage train --help)"),
    pytest.param("train --save /proc/x.npz", 1, "/proc/x.npz: cannot create a file in /proc (No "
                                                "such file or directory)", marks=LINUX),
    ("train --save {tmp}", 1, "{tmp}: is a folder; give a file name"),
    ("compare --out {file}", 2, "--out {file}: exists and is not a folder"),
    pytest.param("compare --out /proc/runs", 1, "/proc/runs: cannot write files here (No such "
                                                "file or directory)", marks=LINUX),
    ("train --save {file}/x.npz", 1, "{file}/x.npz: cannot create a file in {file} (not a "
                                     "folder)"),
    ("train --save", 2, "argument --save: expected one argument (see minisage train --help)"),
    ("train --save=", 2, "argument --save: expected a path, got '' (see minisage train --help)"),
    ("train --resume {tmp}/missing.npz", 1, "{tmp}/missing.npz: No such file or directory"),
    ("train --resume {tmp}", 1, "{tmp}: Is a directory"),
    ("train --resume {garbage}", 1, "{garbage}: not a .npz checkpoint (not a zip archive)"),
    ("train --resume {const} --lr 0.5", 2, f"--lr is 0.5, but {{const}} was saved with 0.001: "
                                           f"{KEEPS}"),
    ("train --resume {const} --optimizer adamw", 2, "--optimizer is 'adamw', but {const} was "
                                                    f"saved with 'bert-adamw': {KEEPS}"),
    ("train --resume {const} --task modular", 2, "--task is 'modular', but {const} was saved "
                                                 f"with 'sort': {KEEPS}"),
    ("train --resume {const}", 2, "{const} holds the whole run (step 3 of 3): nothing to resume; "
                                  "give more steps (> 3) to extend it"),
    ("train --resume {const} --steps 2", 2, "--steps is 2, but {const} is already at step 3: "
                                            "give more than that"),
    ("train --resume {const} --steps 0", 2, "--steps must be an integer >= 1, got 0"),
    ("train --resume {linear} --steps 6", 2, "--steps is 6, but {linear} was saved with 4: the "
                                             "linear schedule sets every step's lr from the "
                                             "total number of steps, so only a run with the "
                                             "constant schedule can be extended"),
    ("train --resume {pre} --d-model 32 --n-heads 4", 2, "--d-model is 32, but {pre} was saved "
                                                         "with 16: a resumed run keeps its "
                                                         "settings (only pretrain_steps may "
                                                         "change)"),
    pytest.param("train --resume {const} --steps 5 --save /proc/x.npz", 1,
                 "/proc/x.npz: cannot create a file in /proc (No such file or directory)",
                 marks=LINUX),
    ("nope", 2, "argument COMMAND: invalid choice: 'nope' (choose from "),
    ("golden", 2, "say what to do: export DIR, check [DIR] or list (see minisage golden --help)"),
    ("golden export", 2, "the following arguments are required: DIR (see minisage golden export "
                         "--help)"),
    ("golden check {tmp}/none", 1, "{tmp}/none: No such file or directory"),
    ("golden check {file}", 1, "{file}: not a folder"),
    ("golden check {tmp}", 1, "{tmp}: no golden file here (expected sgd.json, adam.json, "),
    pytest.param("golden export /proc/golden", 1, "/proc/golden: cannot write files here (No "
                                                  "such file or directory)", marks=LINUX),
    ("golden export {file}", 1, "{file}: cannot write files here (not a folder)"),
    ("golden export {tmp}/g --preset lamb", 2, f"unknown preset 'lamb'; choose one of: {PRESETS}"),
    ("golden list --preset lamb", 2, f"unknown preset 'lamb'; choose one of: {PRESETS}"),
    ("golden check --bogus", 2, "unrecognized arguments: --bogus (see minisage golden --help)"),
    ("crosscheck", 2, "the following arguments are required: --backend (see minisage crosscheck "
                      "--help)"),
    ("crosscheck --backend numpy", 2, "argument --backend: invalid choice: 'numpy' (choose from "),
    ("crosscheck --backend torch --device tpu", 2, "--device must be cpu or cuda (optionally "
                                                   "cuda:N), got 'tpu'"),
    ("crosscheck --backend torch --dtype float16", 2, "argument --dtype: invalid choice: "
                                                      "'float16' (choose from "),
]


@pytest.mark.parametrize("argv, status, line", COMMAND_LINE, ids=[
    c.values[0] if hasattr(c, "values") else c[0] for c in COMMAND_LINE])
def test_command_line_mistakes_are_one_line_before_any_work(files, capsys, monkeypatch, argv,
                                                            status, line):
    def no_work(*args, **kwargs):
        raise AssertionError("training started before the mistake was caught")

    monkeypatch.setattr(cli_train, "train", no_work)
    monkeypatch.setattr(cli_train, "pretrained_state", no_work)
    monkeypatch.setattr("minisage.compare.pretrained_weights", no_work)
    words = [w.format(**files) for w in argv.split()]
    assert main(words) == status
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and err.count("\n") == 1, err
    command = words[0] if words[0] in ("train", "compare", "golden", "crosscheck") else None
    prog = f"minisage {command}" if command else "minisage"
    if words[:2] == ["golden", "export"] and len(words) == 2:
        prog = "minisage golden export"
    expected = f"{prog}: error: {line.format(**files)}"
    if expected.endswith("(choose from ") or expected.endswith(", "):  # the list follows
        assert err.startswith(expected), err
    else:
        assert err == expected + "\n"


@pytest.mark.parametrize("argv, prog", [(["golden", "export", ""], "minisage golden export"),
                                        (["golden", "check", " "], "minisage golden check"),
                                        (["train", "--resume", ""], "minisage train")])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(capsys, argv, prog):
    assert main(argv) == 2
    name = "DIR" if argv[0] == "golden" else "--resume"
    assert capsys.readouterr().err == (f"{prog}: error: argument {name}: expected a path, got "
                                       f"{argv[-1]!r} (see {prog} --help)\n")


def test_check_reports_a_folder_in_place_of_a_golden_file(tmp_path, capsys):
    generate.export(tmp_path, ("sgd",))
    (tmp_path / "adam.json").mkdir()
    assert main(["golden", "check", str(tmp_path), "--preset", "sgd", "--preset", "adam"]) == 1
    assert capsys.readouterr().out == f"{tmp_path / 'adam.json'}: a folder, not a file\n"


def test_crosscheck_names_a_preset_the_backend_lacks(capsys):
    pytest.importorskip("torch")
    assert main(["crosscheck", "--backend", "torch", "--preset", "lamb"]) == 2
    assert capsys.readouterr().err == (
        "minisage crosscheck: error: the torch backend implements no preset 'lamb'; it has: "
        "adam, adam-sage, adamax, adamax-sage, adamw, adamw-sage, bert-adamax, bert-adamw, "
        "sgd\n")


# ----- the library ----------------------------------------------------------------------------

def _nan_parameter_in_an_optimizer():
    good, bad = Parameter(np.ones(3)), Parameter(np.array([1.0, np.inf, 2.0]))
    for p in (good, bad):
        p.grad = np.full(3, 0.5)
    optimizer = optim.make("adamw-sage", [("w", good), ("b", bad)], lr=0.1)
    try:
        optimizer.step()
    finally:  # nothing was changed, the good parameter included
        assert np.array_equal(good.data, np.ones(3)) and optimizer.state == {}


LIBRARY = [
    (lambda f: TransformerConfig(d_model=0), ValueError,
     "TransformerConfig: d_model must be an integer >= 1, got 0"),
    (lambda f: TransformerConfig(n_heads=2.0), ValueError,
     "TransformerConfig: n_heads must be an integer >= 1, got 2.0"),
    (lambda f: TransformerConfig(num_classes=-1), ValueError,
     "TransformerConfig: num_classes must be an integer >= 0 (0: no classification head), "
     "got -1"),
    (lambda f: TransformerConfig(dtype="float16"), ValueError,
     "TransformerConfig: dtype must be 'float32' or 'float64', got 'float16'"),
    (lambda f: TrainConfig(steps=-1), UsageError,
     "TrainConfig: steps must be an integer >= 1, got -1"),
    (lambda f: TrainConfig(steps=True), UsageError,
     "TrainConfig: steps must be an integer >= 1, got True"),
    (lambda f: TrainConfig(steps=2.0), UsageError,
     "TrainConfig: steps must be an integer >= 1, got 2.0"),
    (lambda f: TrainConfig(dtype="float16"), UsageError,
     "TrainConfig: dtype must be one of float64, float32, got 'float16'"),
    (lambda f: TrainConfig(beta3=0.0), UsageError, f"TrainConfig: beta3 {BETA3_ZERO}"),
    (lambda f: TrainConfig(lr=float("inf")), UsageError,
     "TrainConfig: lr must be a number in (0, inf), got inf"),
    (lambda f: TrainConfig(lr="fast"), UsageError,
     "TrainConfig: lr must be a number in (0, inf), got 'fast'"),
    (lambda f: TrainConfig(warmup=-0.1), UsageError,
     "TrainConfig: warmup must be a fraction of the steps in [0, 1), got -0.1"),
    (lambda f: TrainConfig(task="mnist"), UsageError,
     "TrainConfig: task must be one of sort, modular, finetune, got 'mnist'"),
    (lambda f: TrainConfig(optimizer="lamb"), UsageError,
     f"TrainConfig: optimizer must be one of {PRESETS}, got 'lamb'"),
    (lambda f: TrainConfig(n_heads=3), UsageError,
     "TrainConfig: d_model must be divisible by n_heads (3), got 32"),
    (lambda f: TrainConfig(labels=2.0), UsageError,
     "TrainConfig: labels must be an integer >= 1 (or None: the task's default), got 2.0"),
    (lambda f: TrainConfig(eval_every=None), UsageError,
     "TrainConfig: eval_every must be an integer >= 0 (0: only at the last step), got None"),
    (lambda f: TrainConfig(seed=-1), UsageError,
     "TrainConfig: seed must be an integer >= 0, got -1"),
    (lambda f: TrainConfig(schedule="step"), UsageError,
     "TrainConfig: schedule must be one of constant, linear, cosine, got 'step'"),
    (lambda f: TrainConfig.from_dict({"learning_rate": 0.1}), UsageError,
     "TrainConfig.from_dict: unknown field(s) learning_rate; allowed: "),
    (lambda f: spec.make("adamw-sage", beta3=0.0), ValueError, f"adamw-sage: beta3 {BETA3_ZERO}"),
    (lambda f: spec.make("adam", eps=0.0), ValueError,
     "adam: eps must be in (0, inf), got 0.0: with eps = 0 an entry whose gradient has always "
     "been 0 (or, in SAGE's r, whose value is 0) would become 0 / 0 = NaN"),
    (lambda f: spec.make("adamax-sage", lr=1e-3, eps=1e-30), ValueError,
     "adamax-sage: eps must be in (0, inf) with eps**2 > 0 in float32 (at least 1.4e-45), got "
     "1e-30: eps**2 = 1e-60 rounds to 0 in float32, and an entry whose gradient has always been "
     "0 (or, in SAGE's r, whose value is 0) would become 0 / 0 = NaN"),
    (lambda f: spec.make("adam-sage", sage_eps=0.0), ValueError,
     "adam-sage: sage_eps must be in (0, inf), got 0.0: with sage_eps = 0 an entry whose "
     "gradient has always been 0 (or, in SAGE's r, whose value is 0) would become 0 / 0 = NaN"),
    (lambda f: spec.make("adam").step(np.array([np.nan, 1.0]), np.ones(2),
                                      spec.make("adam").init(np.ones(2)), name="w"),
     FloatingPointError, "adam: non-finite value in parameter 'w' (1 of 2 entries are NaN or "
                         "infinite); the parameter and its state were left unchanged"),
    (lambda f: _nan_parameter_in_an_optimizer(), FloatingPointError,
     "adamw-sage: non-finite value in parameter 'b' (1 of 3 entries are NaN or infinite); the "
     "parameter and its state were left unchanged"),
    (lambda f: train(TrainConfig(steps=3, **SMALL), stop_at=0), UsageError,
     "train: stop_at must be an integer in [1, 3] (from the first step of this call to "
     "config.steps), got 0"),
    (lambda f: train(TrainConfig(steps=3, **SMALL), checkpoint_path=f["tmp"]),
     IsADirectoryError, "is a folder; give a file name"),
    (lambda f: train(TrainConfig(steps=3, lr=0.5, schedule="constant", **SMALL),
                     resume=checkpoint.load(f["const"])), UsageError,
     f"resume: lr is 0.5, but {{const}} was saved with 0.001: {KEEPS}"),
    (lambda f: train(TrainConfig(steps=3, **SMALL), resume=checkpoint.load(f["pre"])),
     CheckpointError, "{pre} holds the pretraining stage of a run, not a run"),
    (lambda f: pretrained_state(TrainConfig(steps=3, **SMALL), make_task("sort"),
                                resume=checkpoint.load(f["pre"])), UsageError,
     "{pre}: a pretraining checkpoint, but this run has no pretraining stage"),
    (lambda f: checkpoint.save(Path(f["tmp"]) / "x.npz",
                               checkpoint.Checkpoint(config={}, step=0, model={}, stage="x")),
     ValueError, "checkpoint stage must be one of train, pretrain, got 'x'"),
    (lambda f: golden.load(f["garbage"]), GoldenFormatError,
     "{garbage}: not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (lambda f: golden.load(Path(f["const"])), GoldenFormatError,
     "{const}: not UTF-8 text (invalid start byte at byte "),
    (lambda f: generate.compare(Path(f["tmp"]) / "none"), FileNotFoundError,
     "No such file or directory"),
    (lambda f: generate.export(f["file"]), NotADirectoryError,
     "cannot write files here (not a folder)"),
    (lambda f: check_writable(Path(f["file"]) / "x.npz"), NotADirectoryError,
     "cannot create a file in {file} (not a folder)"),
]


@pytest.mark.parametrize("call, error, message", LIBRARY,
                         ids=[f"library-{i}" for i in range(len(LIBRARY))])
def test_library_mistakes_raise_one_clear_error(files, call, error, message):
    with pytest.raises(error) as info:
        call(files)
    text = info.value.strerror if isinstance(info.value, OSError) else str(info.value)
    expected = message.format(**files)
    if expected.endswith((": ", "byte ")):  # the rest lists what is allowed, or where
        assert text.startswith(expected), text
    else:
        assert text == expected
    if isinstance(info.value, ConfigError):
        assert info.value.field in expected  # the command line shows it as its flag
