"""Training: the config, the loop with per-step callbacks, the sensitivity recorder, analysis
after training, checkpoints and Ctrl-C handling.

- :mod:`~minisage.train.config`: :class:`TrainConfig`, everything that determines a run;
- :mod:`~minisage.train.loop`: :func:`train` (one run, with callbacks), :func:`evaluate`,
  :func:`build_optimizer`, :func:`pretrained_state`, checkpoint save/restore and
  :func:`check_resume` (what a resumed run may change);
- :mod:`~minisage.train.recorder`: :class:`SensitivityRecorder`, a callback measuring I, Ibar,
  U and r for any optimizer;
- :mod:`~minisage.train.analysis`: :func:`pruning_curve`, :func:`batch_sensitivity`; and from
  :mod:`minisage.stats`, :func:`mean_ci`, :func:`welch_p`;
- :mod:`~minisage.train.checkpoint`: the ``.npz`` format (knows nothing of training);
- :mod:`~minisage.train.interrupt`: Ctrl-C deferred to the end of a step.

The command ``minisage train`` is :mod:`minisage.cli.train`.
"""

from minisage.stats import mean_ci, welch_p
from minisage.train import checkpoint
from minisage.train.analysis import batch_sensitivity, nan_to_none, pruning_curve
from minisage.train.checkpoint import Checkpoint
from minisage.train.config import ConfigError, TrainConfig
from minisage.train.interrupt import TrainingInterrupted, deferred_interrupt
from minisage.train.loop import (
    RunResult,
    batch_for_step,
    build_optimizer,
    check_resume,
    config_of,
    evaluate,
    loss_and_logits,
    lr_schedule,
    pretrain_config,
    pretrained_state,
    restore_checkpoint,
    save_checkpoint,
    train,
)
from minisage.train.recorder import (
    QUANTILES,
    SensitivityRecorder,
    decile_means,
    is_sage_matrix,
    sage_matrices,
    shadow_preset,
    shadow_rule,
)

__all__ = [
    "TrainConfig", "ConfigError", "train", "RunResult", "evaluate", "loss_and_logits",
    "batch_for_step",
    "lr_schedule", "build_optimizer", "pretrain_config", "pretrained_state", "SensitivityRecorder",
    "QUANTILES", "is_sage_matrix", "sage_matrices", "shadow_preset", "shadow_rule",
    "decile_means", "batch_sensitivity", "pruning_curve",
    "mean_ci", "welch_p", "nan_to_none", "checkpoint", "Checkpoint", "save_checkpoint",
    "restore_checkpoint", "config_of", "check_resume", "TrainingInterrupted", "deferred_interrupt",
]
