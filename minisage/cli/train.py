"""``minisage train``: one training run of any task with any optimizer preset.

Everything is checked before any work: every value (:class:`~minisage.train.TrainConfig` names the
first one out of range, shown here as its flag), and that the checkpoint file can be written.

The result (config, final metrics, speed) is strict JSON on stdout (an undefined number is
``null``); messages go to stderr: a line when the work starts (unless ``--quiet``), the progress
bar in a terminal, where the checkpoint went.

Ctrl-C, in pretraining or in training, stops after the current step, saves the run (``--save``,
else the ``--resume`` file, else ``<task>-<optimizer>-interrupted.npz``), says where and how to
continue, and exits with status 130. ``--resume`` continues bit for bit: the run as the checkpoint
holds it, pretraining included when it was stopped there. A resumed run keeps its settings: a
flag that contradicts the checkpoint is refused, naming it, except ``--steps``, which extends a
run with the constant schedule (see :mod:`minisage.train.loop`).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from dataclasses import asdict, fields, replace

from minisage import spec
from minisage.cli import arguments
from minisage.errors import UsageError
from minisage.files import check_writable
from minisage.tasks import TASKS, make_task
from minisage.train import (
    ConfigError,
    TrainConfig,
    TrainingInterrupted,
    check_resume,
    checkpoint,
    config_of,
    deferred_interrupt,
    nan_to_none,
    pretrained_state,
    save_checkpoint,
    train,
)
from minisage.train.config import DTYPES, SCHEDULES

DEFAULTS = TrainConfig()
CONFIG_FIELDS = tuple(f.name for f in fields(TrainConfig))


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _default(text: str, field: str) -> str:
    return f"{text} (default: {getattr(DEFAULTS, field)})"


EPILOG = ("Ctrl-C, in pretraining or in training, stops after the current step, saves the run "
          "(see --save) and says how to continue it: minisage train --resume FILE, bit for bit. "
          "A resumed run keeps the checkpoint's settings: a flag that contradicts them is "
          "refused, except --steps, which extends a run with the constant schedule (a run "
          "stopped in pretraining may change --steps, and extend --pretrain-steps likewise).")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    # Every config flag defaults to None, so that a value the user gave can be told from a
    # default (a resumed run refuses the given ones that contradict its checkpoint); --help shows
    # the default each stands for.
    run = parser.add_argument_group(
        "the run", "every field of minisage.train.TrainConfig; with --resume only --steps may "
        "differ from the checkpoint")
    run.add_argument("--task", choices=sorted(TASKS), help=_default("the toy task", "task"))
    run.add_argument("--optimizer", choices=spec.presets(), metavar="PRESET",
                     help=_default(f"a spec preset: {', '.join(spec.presets())}", "optimizer"))
    run.add_argument("--labels", type=int, metavar="N",
                     help="size of the training split (finetune: labeled walks) (default: the "
                          "task's own, 2048 for finetune)")
    run.add_argument("--lr", type=float, help=_default("base learning rate", "lr"))
    run.add_argument("--beta3", type=float,
                     help=_default("SAGE's sensitivity average, in (0, 1) (SAGE presets; the "
                                   "recorder of the others)", "beta3"))
    run.add_argument("--steps", type=int, metavar="N",
                     help=_default("training steps; with --resume, the step to continue to "
                                   "(constant schedule)", "steps"))
    run.add_argument("--batch-size", type=int, metavar="N",
                     help=_default("rows per training batch", "batch_size"))
    run.add_argument("--weight-decay", type=float,
                     help=_default("weight decay of every parameter except biases and "
                                   "LayerNorms", "weight_decay"))
    run.add_argument("--clip-norm", type=float,
                     help=_default("global gradient-norm clipping (0: off)", "clip_norm"))
    run.add_argument("--schedule", choices=SCHEDULES,
                     help=_default("learning-rate schedule (linear and cosine warm up first)",
                                   "schedule"))
    run.add_argument("--warmup", type=float,
                     help=_default("warm-up of the linear and cosine schedules, a fraction of "
                                   "--steps in [0, 1)", "warmup"))
    run.add_argument("--eval-every", type=int, metavar="N",
                     help=_default("evaluate every N steps and at the last (0: only at the last)",
                                   "eval_every"))
    run.add_argument("--eval-rows", type=int, metavar="N",
                     help=_default("rows of the training and validation splits each evaluation "
                                   "uses", "eval_rows"))
    run.add_argument("--record-every", type=int, metavar="N",
                     help=_default("record the sensitivity statistics every N steps (0: off)",
                                   "record_every"))
    run.add_argument("--seed", type=int,
                     help=_default("seed of the training data, the initialization and the batch "
                                   "order", "seed"))
    run.add_argument("--d-model", type=int, metavar="N",
                     help=_default("width of the Transformer", "d_model"))
    run.add_argument("--n-layers", type=int, metavar="N",
                     help=_default("number of Transformer blocks", "n_layers"))
    run.add_argument("--n-heads", type=int, metavar="N",
                     help=_default("attention heads per block (must divide --d-model)",
                                   "n_heads"))
    run.add_argument("--dtype", choices=DTYPES,
                     help=_default("floating-point type of the model", "dtype"))
    run.add_argument("--pretrain-steps", type=int, metavar="N",
                     help=_default("steps of the pretraining stage of tasks that have one "
                                   "(finetune; 0: none)", "pretrain_steps"))
    run.add_argument("--pretrain-lr", type=float,
                     help=_default("learning rate of the pretraining stage", "pretrain_lr"))
    parser.add_argument("--save", metavar="PATH", type=arguments.path,
                        help="write a checkpoint (.npz) at the end; checked writable before the "
                             "run starts; folders are created (default: none; Ctrl-C saves to "
                             "this path, else the --resume file, else "
                             "<task>-<optimizer>-interrupted.npz)")
    parser.add_argument("--resume", metavar="CHECKPOINT", type=arguments.path,
                        help="continue from a checkpoint, with its settings (default: none)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no start line on stderr")


def _as_flags(err: ConfigError) -> UsageError:
    """A ConfigError as the command line says it: the field as its flag."""
    return UsageError(f"{_flag(err.field)} {err.reason}")


def config_from_args(args: argparse.Namespace,
                     resume: checkpoint.Checkpoint | None = None) -> TrainConfig:
    """The run's config: the flags given over the defaults, or over the checkpoint's config when
    resuming (which refuses a flag that contradicts it). UsageError names the flag."""
    given = {name: getattr(args, name) for name in CONFIG_FIELDS
             if getattr(args, name, None) is not None}
    try:
        if resume is None:
            return TrainConfig(**given)
        config = replace(config_of(resume), **given)
        check_resume(config, resume, resume.stage)
        return config
    except ConfigError as err:
        raise _as_flags(err) from None


def _checkpoint_path(args: argparse.Namespace, config: TrainConfig) -> str:
    """Where the run is saved on Ctrl-C, checked writable now."""
    path = args.save or args.resume or f"{config.task}-{config.optimizer}-interrupted.npz"
    try:
        check_writable(path)
    except OSError as err:
        if args.save:
            raise
        raise type(err)(err.errno or errno.EACCES, f"{err.strerror}; Ctrl-C would save the run "
                        "here: give --save PATH", err.filename) from None
    return path


def _start_line(config: TrainConfig, task, resume, path: str) -> str:
    """What is about to run, and where Ctrl-C saves it."""
    pretrain = task.pretrain is not None and config.pretrain_steps > 0
    if resume is None:
        work = f"{config.steps} steps" + (f" after {config.pretrain_steps} pretraining steps"
                                          if pretrain else "")
    elif resume.stage == "pretrain":
        work = (f"pretraining steps {resume.step + 1}-{config.pretrain_steps}, then "
                f"{config.steps} steps (resumed from {resume.path})")
    else:
        work = f"steps {resume.step + 1}-{config.steps} (resumed from {resume.path})"
    return (f"minisage train: {config.task} with {config.optimizer}, {work}; Ctrl-C stops after "
            f"the current step and saves the run to {path}")


def run(args: argparse.Namespace) -> int:
    resume = checkpoint.load(args.resume) if args.resume else None
    config = config_from_args(args, resume)
    path = _checkpoint_path(args, config)
    task = make_task(config.task, seed=config.seed, n_train=config.labels)
    progress = not args.quiet
    with deferred_interrupt():  # Ctrl-C from here on: at the end of a step, in either stage
        if not args.quiet:
            print(_start_line(config, task, resume, path), file=sys.stderr, flush=True)
        try:
            init_state = None
            if resume is None or resume.stage == "pretrain":
                init_state = pretrained_state(config, task, progress, checkpoint_path=path,
                                              resume=resume)
            result = train(config, task, init_state=init_state, progress=progress,
                           checkpoint_path=path,
                           resume=resume if resume is not None and resume.stage == "train"
                           else None)
        except TrainingInterrupted as err:  # the one handler reports it: exit status 130
            raise KeyboardInterrupt(f"{err} (continue with: minisage train --resume "
                                    f"{err.checkpoint_path})") from None
        if args.save:
            save_checkpoint(args.save, config, result.model, result.optimizer, result.recorder,
                            result.history, step=config.steps)
    report = {"config": asdict(config), "final": result.final,
              "steps_per_second": round(result.steps_per_second, 2)}
    if resume is not None:
        report["resumed_from"] = {"checkpoint": os.path.abspath(resume.path),
                                  "stage": resume.stage, "step": resume.step}
    print(json.dumps(nan_to_none(report), indent=2, allow_nan=False))
    if args.save:
        print(f"saved checkpoint to {os.path.abspath(args.save)}", file=sys.stderr)
    return 0
