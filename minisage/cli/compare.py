"""``minisage compare``: several optimizers, each at its own settings, over several seeds, reported
on a test split that selection never saw, with paired differences (:mod:`minisage.compare`).

Settings (lr, beta3) come from the committed tuning record of the task when it matches the
protocol, from ``--lr``/``--beta3``, or from ``--tune``, which selects them now on the validation
split of the tuning seeds; the report says which, per optimizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from minisage import compare as cmp
from minisage import spec
from minisage.errors import UsageError
from minisage.tasks import TASKS
from minisage.train import nan_to_none

FLAGS = {  # flag -> (TrainConfig field, type, help)
    "--labels": ("labels", int, "size of the training split (finetune: labeled walks; default: "
                               "the task's own, 2048 for finetune; 256 gives the memorization "
                               "regime)"),
    "--steps": ("steps", int, "training steps per run"),
    "--batch-size": ("batch_size", int, "rows per training batch"),
    "--warmup": ("warmup", float, "warm-up of the linear schedule, a fraction of --steps"),
    "--weight-decay": ("weight_decay", float, "weight decay (not on biases and LayerNorms)"),
    "--d-model": ("d_model", int, "width of the Transformer"),
    "--n-layers": ("n_layers", int, "number of Transformer blocks"),
    "--n-heads": ("n_heads", int, "attention heads per block"),
    "--dtype": ("dtype", str, "floating-point type of the model (float32 or float64)"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    protocol = cmp.default_config()
    parser.add_argument("--task", default="finetune", choices=sorted(TASKS),
                        help="the toy task (minisage.tasks)")
    parser.add_argument("--optimizers", default=",".join(cmp.DEFAULT_OPTIMIZERS),
                        help="comma-separated spec presets; the first is the baseline of the "
                             "paired differences")
    parser.add_argument("--seeds", type=int, default=5,
                        help="report seeds per optimizer (0, 1, ...; tuning uses "
                             f"{', '.join(map(str, cmp.TUNING_SEEDS))})")
    parser.add_argument("--lr", help="learning rate: one for all, or one per optimizer, "
                                     "comma-separated (default: from the tuning record)")
    parser.add_argument("--beta3", help="SAGE's beta3: one for every SAGE optimizer, or one per "
                                        "optimizer with '-' for the others (default: from the "
                                        "tuning record)")
    parser.add_argument("--tune", action="store_true",
                        help="select lr (and beta3) now on a grid, on the validation split of "
                             "the tuning seeds, then report with them")
    parser.add_argument("--record", metavar="PATH",
                        help="take settings from this tuning record (default: "
                             "minisage/tuned/<task>.json)")
    for flag, (field, kind, text) in FLAGS.items():
        parser.add_argument(flag, type=kind, default=getattr(protocol, field), help=text)
    parser.add_argument("--jobs", type=int, default=cmp.usable_cpus(),
                        help="runs in parallel (processes; the numbers do not depend on it)")
    parser.add_argument("--out", help="output folder (default: runs/compare-<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _values(flag: str, text: str | None, optimizers: list[str], kind) -> dict[str, float]:
    """``--lr``/``--beta3`` per optimizer: one value for all or one each ('-': none)."""
    if text is None:
        return {}
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        parts = parts * len(optimizers)
    if len(parts) != len(optimizers):
        raise UsageError(f"{flag} has {len(parts)} values for {len(optimizers)} optimizers")
    values = {}
    for name, part in zip(optimizers, parts):
        if part == "-":
            continue
        try:
            values[name] = kind(part)
        except ValueError:
            raise UsageError(f"{flag}: expected numbers separated by commas, got "
                             f"{text!r}") from None
    return values


def _protocol(args: argparse.Namespace):
    overrides = {field: getattr(args, flag[2:].replace("-", "_"))
                 for flag, (field, _, _) in FLAGS.items()}
    for name in ("steps", "batch_size", "d_model", "n_layers", "n_heads"):
        if overrides[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {overrides[name]}")
    if overrides["labels"] is not None and overrides["labels"] < 1:
        raise UsageError(f"--labels must be >= 1, got {overrides['labels']}")
    if overrides["dtype"] not in ("float32", "float64"):
        raise UsageError(f"--dtype must be float32 or float64, got {overrides['dtype']!r}")
    return cmp.default_config(args.task, **overrides)


def run(args: argparse.Namespace) -> int:
    optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    unknown = [name for name in optimizers if name not in spec.presets()]
    if unknown or not optimizers:
        raise UsageError(f"--optimizers: unknown preset(s) {unknown}; presets: "
                         f"{', '.join(spec.presets())}")
    if len(set(optimizers)) != len(optimizers):
        raise UsageError(f"--optimizers: {args.optimizers!r} names a preset twice")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    base = _protocol(args)
    lrs = _values("--lr", args.lr, optimizers, float)
    beta3s = _values("--beta3", args.beta3, optimizers, float)
    given = {name: {**({"lr": lrs[name]} if name in lrs else {}),
                    **({"beta3": beta3s[name]} if name in beta3s and spec.rule_class(
                        name).sage else {})}
             for name in optimizers if name in lrs or name in beta3s}
    for name, point in given.items():  # the spec checks the values (name, range) now
        spec.make(name, **point)
    out = cmp.prepare_output(args.out)  # a bad --out fails now, before any training
    say = (lambda text: print(text, file=sys.stderr)) if not args.quiet else (lambda text: None)
    show = not args.quiet and sys.stderr.isatty()
    record_path = Path(args.record) if args.record else cmp.record_path(args.task)
    record = cmp.load_record(record_path) if (args.record or record_path.exists()) else None
    # the workers start now: their start-up overlaps the pretraining
    with cmp.Workers(args.jobs) as workers:
        init_state = cmp.pretrained_weights(base, log=say)
        if args.tune:
            with tqdm(desc="tuning", unit="run", disable=not show, leave=False) as bar:
                def tick(_record, bar=bar):
                    bar.update(1)
                record = cmp.tune(base, optimizers, init_state, processes=workers,
                                  progress=tick, log=say)
            record_path = out / "tuning.json"
            record_path.write_text(json.dumps(nan_to_none(record), indent=2, allow_nan=False)
                                   + "\n")
            say(f"tuning record written to {record_path} (to make it the default: copy it to "
                f"{cmp.record_path(args.task)})")
        committed = record_path == cmp.record_path(args.task)
        name = f"minisage/tuned/{args.task}.json" if committed else str(record_path)
        settings = cmp.choose_settings(base, optimizers, given, record, name)
        runs = args.seeds * len(optimizers)
        with tqdm(total=runs, desc="compare", unit="run", disable=not show, leave=False) as bar:
            cmp.compare(replace(base), optimizers, args.seeds, settings, out, processes=workers,
                        progress=lambda _record: bar.update(1), log=print,
                        init_state=init_state)
    return 0
