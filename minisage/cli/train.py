"""``minisage train``: one training run of any task with any optimizer preset.

The result (config, final metrics, speed) is strict JSON on stdout (an undefined number is
``null``); messages go to stderr. Ctrl-C stops between two steps and saves a checkpoint that
``--resume`` continues bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, fields

from minisage import spec
from minisage.errors import UsageError
from minisage.tasks import TASKS, make_task
from minisage.train import (
    TrainConfig,
    TrainingInterrupted,
    checkpoint,
    config_of,
    nan_to_none,
    pretrained_state,
    save_checkpoint,
    train,
)

SCHEDULES = ("constant", "linear", "cosine")
DTYPES = ("float64", "float32")


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--task", default=defaults.task, choices=sorted(TASKS),
                        help="the toy task (minisage.tasks)")
    parser.add_argument("--optimizer", default=defaults.optimizer, metavar="PRESET",
                        help=f"a spec preset: {', '.join(spec.presets())}")
    parser.add_argument("--labels", type=int, default=defaults.labels, metavar="N",
                        help="size of the training split (finetune: labeled walks; default: "
                             "the task's own, 2048 for finetune)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="base learning rate")
    parser.add_argument("--beta3", type=float, default=defaults.beta3,
                        help="SAGE's sensitivity average (SAGE presets; the recorder of others)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="rows per training batch")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                        help="weight decay of every parameter except biases and LayerNorms")
    parser.add_argument("--clip-norm", type=float, default=defaults.clip_norm,
                        help="global gradient-norm clipping (0: off)")
    parser.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES,
                        help="learning-rate schedule (linear and cosine warm up first)")
    parser.add_argument("--warmup", type=float, default=defaults.warmup,
                        help="warm-up of the linear and cosine schedules, a fraction of --steps")
    parser.add_argument("--d-model", type=int, default=defaults.d_model,
                        help="width of the Transformer")
    parser.add_argument("--n-layers", type=int, default=defaults.n_layers,
                        help="number of Transformer blocks")
    parser.add_argument("--n-heads", type=int, default=defaults.n_heads,
                        help="attention heads per block (must divide --d-model)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the initialization and the batch order")
    parser.add_argument("--dtype", default=defaults.dtype, choices=DTYPES,
                        help="floating-point type of the model")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help="evaluate every this many steps (and at the last)")
    parser.add_argument("--save", metavar="PATH",
                        help="write a checkpoint (.npz) at the end (default: none; Ctrl-C saves "
                             "to this path, or to <task>-<optimizer>-interrupted.npz)")
    parser.add_argument("--resume", metavar="CHECKPOINT",
                        help="continue from a checkpoint, with its settings (default: none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config from the command line; UsageError names a value out of range."""
    if args.optimizer not in spec.presets():
        raise UsageError(f"--optimizer: unknown preset {args.optimizer!r}; presets: "
                         f"{', '.join(spec.presets())}")
    for name in ("steps", "batch_size", "eval_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got "
                             f"{getattr(args, name)}")
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**given)


def run(args: argparse.Namespace) -> int:
    resume = None
    if args.resume:
        resume = checkpoint.load(args.resume)
        config = config_of(resume)
    else:
        config = config_from_args(args)
    task = make_task(config.task)
    init_state = None
    if task.pretrain is not None and resume is None:
        init_state = pretrained_state(config, task, progress=not args.quiet)
    interrupted_path = args.save or f"{config.task}-{config.optimizer}-interrupted.npz"
    try:
        result = train(config, task, init_state=init_state, progress=not args.quiet,
                       checkpoint_path=interrupted_path, resume=resume)
    except TrainingInterrupted as err:  # the one handler reports it: exit status 130
        raise KeyboardInterrupt(f"{err} (continue with: minisage train --resume "
                                f"{err.checkpoint_path})") from None
    report = {"config": asdict(config), "final": result.final,
              "steps_per_second": round(result.steps_per_second, 2)}
    print(json.dumps(nan_to_none(report), indent=2, allow_nan=False))
    if args.save:
        save_checkpoint(args.save, config, result.model, result.optimizer, result.recorder,
                        result.history, step=config.steps)
        print(f"saved checkpoint to {os.path.abspath(args.save)}", file=sys.stderr)
    return 0
