"""``minisage compare``: several optimizers over several seeds (:func:`minisage.compare.compare`).
"""

from __future__ import annotations

import argparse

from minisage import spec
from minisage.compare import DEFAULT_OPTIMIZERS, compare
from minisage.errors import UsageError
from minisage.tasks import TASKS
from minisage.train import TrainConfig


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--task", default="finetune", choices=sorted(TASKS),
                        help="the toy task (minisage.tasks)")
    parser.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                        help="comma-separated spec presets; the first is the baseline")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per optimizer")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="training steps per run")
    parser.add_argument("--lr", default=str(defaults.lr),
                        help="one learning rate for all, or one per optimizer, comma-separated")
    parser.add_argument("--out", help="output folder (default: runs/compare-<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _learning_rates(text: str, optimizers: list[str]) -> dict[str, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--lr: expected numbers separated by commas, got {text!r}") from None
    if len(values) == 1:
        values = values * len(optimizers)
    if len(values) != len(optimizers):
        raise UsageError(f"--lr has {len(values)} values for {len(optimizers)} optimizers")
    return dict(zip(optimizers, values))


def run(args: argparse.Namespace) -> int:
    optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    unknown = [name for name in optimizers if name not in spec.presets()]
    if unknown or not optimizers:
        raise UsageError(f"--optimizers: unknown preset(s) {unknown}; presets: "
                         f"{', '.join(spec.presets())}")
    if args.seeds < 1 or args.steps < 1:
        raise UsageError(f"--seeds and --steps must be >= 1, got {args.seeds} and {args.steps}")
    compare(args.task, optimizers, args.seeds, args.steps, _learning_rates(args.lr, optimizers),
            args.out, progress=not args.quiet)
    return 0
