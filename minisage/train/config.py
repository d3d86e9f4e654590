"""The configuration of a training run: everything that determines its numbers, checked when it
is made (a value out of range raises :class:`ConfigError` naming the field and its range)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from minisage import spec
from minisage.errors import UsageError
from minisage.nn import TransformerConfig
from minisage.nn.transformer import DTYPES
from minisage.spec import _checks
from minisage.tasks import TASKS, Task

SCHEDULES = ("constant", "linear", "cosine")


class ConfigError(UsageError):
    """A TrainConfig value that is not allowed: ``field`` names it, ``reason`` says what is wrong
    (the message is ``"TrainConfig: <field> <reason>"``; the command line shows ``--<field>``)."""

    def __init__(self, field: str, reason: str, prefix: str = "TrainConfig") -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{prefix}: {field} {reason}")


def _integer(field: str, value, low: int, meaning: str = "") -> int:
    """An integer >= ``low`` (not a bool, not a float); ``meaning`` explains the bound."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(field, f"must be an integer >= {low}{meaning}, got {value!r}")
    return int(value)


def _number(field: str, value, *, positive: bool, meaning: str = "") -> float:
    """A finite real number, > 0 (``positive``) or >= 0."""
    bound = "(0, inf)" if positive else "[0, inf)"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        x = float(value)
        ok = math.isfinite(x) and (x > 0 if positive else x >= 0)
    if not ok:
        raise ConfigError(field, f"must be a number in {bound}{meaning}, got {value!r}")
    return float(value)


def _choice(field: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(field, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run; the same config gives the same numbers."""

    task: str = "finetune"
    labels: int | None = None  # size of the training split (finetune: labeled walks); None: the
    #                            task's default (minisage.tasks)
    optimizer: str = "bert-adamw"  # any spec preset name
    lr: float = 1e-3
    beta3: float = 0.75  # SAGE's sensitivity EMA (SAGE presets; the recorder of the others)
    steps: int = 200
    batch_size: int = 32
    weight_decay: float = 0.01
    clip_norm: float = 1.0  # global gradient-norm clipping; 0 turns it off
    schedule: str = "linear"  # constant | linear (warmup then linear decay) | cosine
    warmup: float = 0.1  # fraction of the steps
    eval_every: int = 25
    eval_rows: int = 1024  # rows of the training and validation splits each evaluation uses
    record_every: int = 10  # sensitivity recorder; 0 turns it off
    seed: int = 0  # the training data, the initialization and the batch order
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 4
    dtype: str = "float64"
    pretrain_steps: int = 400  # for tasks with a pretraining stage (finetune); 0: none
    pretrain_lr: float = 3e-3

    def __post_init__(self) -> None:
        """Check every value (ConfigError names the first one out of range) and store numbers as
        plain Python ints and floats (so that ``asdict`` is JSON)."""
        checked = {
            "task": _choice("task", self.task, tuple(TASKS)),
            "labels": None if self.labels is None else _integer(
                "labels", self.labels, 1, " (or None: the task's default)"),
            "optimizer": _choice("optimizer", self.optimizer, spec.presets()),
            "lr": _number("lr", self.lr, positive=True),
            "beta3": self._beta3(),
            "steps": _integer("steps", self.steps, 1),
            "batch_size": _integer("batch_size", self.batch_size, 1),
            "weight_decay": _number("weight_decay", self.weight_decay, positive=False),
            "clip_norm": _number("clip_norm", self.clip_norm, positive=False, meaning=" (0: off)"),
            "schedule": _choice("schedule", self.schedule, SCHEDULES),
            "warmup": self._warmup(),
            "eval_every": _integer("eval_every", self.eval_every, 0,
                                   " (0: only at the last step)"),
            "eval_rows": _integer("eval_rows", self.eval_rows, 1),
            "record_every": _integer("record_every", self.record_every, 0, " (0: off)"),
            "seed": _integer("seed", self.seed, 0),
            "d_model": _integer("d_model", self.d_model, 1),
            "n_layers": _integer("n_layers", self.n_layers, 1),
            "n_heads": _integer("n_heads", self.n_heads, 1),
            "dtype": _choice("dtype", self.dtype, DTYPES),
            "pretrain_steps": _integer("pretrain_steps", self.pretrain_steps, 0, " (0: none)"),
            "pretrain_lr": _number("pretrain_lr", self.pretrain_lr, positive=True),
        }
        if checked["d_model"] % checked["n_heads"]:
            raise ConfigError("d_model", f"must be divisible by n_heads ({checked['n_heads']}), "
                                         f"got {checked['d_model']}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def _beta3(self) -> float:
        """SAGE's sensitivity average (also the recorder's, for every optimizer): the spec's own
        check, in (0, 1)."""
        try:
            return _checks.sage_beta3("TrainConfig", self.beta3)
        except ValueError as err:
            raise ConfigError("beta3", str(err).removeprefix("TrainConfig: beta3 ")) from None

    def _warmup(self) -> float:
        x = self.warmup
        if (isinstance(x, bool) or not isinstance(x, numbers.Real)
                or not 0 <= float(x) < 1):
            raise ConfigError("warmup", f"must be a fraction of the steps in [0, 1), got {x!r}")
        return float(x)

    def model_config(self, task: Task, pretrain: bool = False) -> TransformerConfig:
        return TransformerConfig(
            vocab_size=task.vocab_size, max_len=task.seq_len, d_model=self.d_model,
            n_layers=self.n_layers, n_heads=self.n_heads, num_classes=task.num_classes,
            causal=task.causal, dtype=self.dtype,
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The config of a plain dict (as ``dataclasses.asdict`` writes it, e.g. in a
        checkpoint); fields left out keep their defaults. UsageError names unknown fields."""
        if not isinstance(values, Mapping):
            raise UsageError(f"TrainConfig.from_dict: expected a dict, got "
                             f"{type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"TrainConfig.from_dict: unknown field(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(known))}")
        return cls(**values)
