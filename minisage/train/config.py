"""The configuration of a training run: everything that determines its numbers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from minisage.errors import UsageError
from minisage.nn import TransformerConfig
from minisage.tasks import Task


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
    pretrain_steps: int = 400  # for tasks with a pretraining stage (finetune)
    pretrain_lr: float = 3e-3

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
