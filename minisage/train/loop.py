"""The training loop: batches, loss, evaluation, the optimizer, per-step callbacks, checkpoints.

``train(config)`` runs one training run of a task with any optimizer preset and returns a
:class:`RunResult` (history of metrics, recorder, model). The same config gives identical numbers.

Resuming (``train(config, resume=checkpoint)``) continues a saved run bit for bit. Its config must
be the saved one (:func:`check_resume`), except ``steps``, which may grow when the schedule is
constant: the run is then extended, step for step the run that had asked for that many steps from
the start (its history keeps the row of the old last step). The linear and cosine schedules spread
over all the steps, so a different number of steps changes the lr of every step and is refused.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import minisage.functional as F
from minisage import optim, spec
from minisage.autograd import no_grad
from minisage.errors import CheckpointError, UsageError
from minisage.files import check_writable
from minisage.nn import Transformer
from minisage.spec.split import SAGE_PATTERNS
from minisage.tasks import IGNORE, Task, make_task
from minisage.train import checkpoint as ckpt
from minisage.train.config import ConfigError, TrainConfig
from minisage.train.interrupt import TrainingInterrupted, deferred_interrupt
from minisage.train.recorder import SensitivityRecorder, shadow_rule


# ----- loss and evaluation ---------------------------------------------------------------------
def loss_and_logits(model: Transformer, task: Task, ids, targets):
    """Mean cross-entropy of a batch and its logits: per position for "lm", per sequence else."""
    if task.head == "lm":
        logits = model.lm_logits(ids)  # (B, T, V)
        return F.cross_entropy(logits, targets, ignore_index=IGNORE), logits
    logits = model.classify_logits(ids)  # (B, C)
    return F.cross_entropy(logits, targets), logits


def evaluate(model: Transformer, task: Task, split, batch_size: int = 512) -> dict[str, float]:
    """Loss and accuracy on a split (accuracy over scored positions for "lm" tasks)."""
    was_training = model.training
    model.eval()
    total_loss, correct, counted = 0.0, 0, 0
    with no_grad():
        for start in range(0, len(split), batch_size):
            ids = split.ids[start:start + batch_size]
            targets = split.targets[start:start + batch_size]
            loss, logits = loss_and_logits(model, task, ids, targets)
            scored = targets != IGNORE
            n = int(scored.sum())
            total_loss += loss.item() * n
            correct += int((logits.data.argmax(-1) == targets)[scored].sum())
            counted += n
    model.train(was_training)
    return {"loss": total_loss / max(counted, 1), "accuracy": correct / max(counted, 1)}


def lr_schedule(config: TrainConfig):
    """``step -> lr`` for steps 1..config.steps: the base lr times the spec schedule's multiplier,
    which counts the steps already taken (0 at the first)."""
    if config.schedule == "constant":
        factor = spec.make_schedule("constant")
    else:
        factor = spec.make_schedule(config.schedule, total_steps=config.steps,
                                    warmup_steps=int(round(config.warmup * config.steps)))
    return lambda step: config.lr * factor(step - 1)


def batch_for_step(task: Task, seed: int, step: int, batch_size: int):
    """Training batch number ``step`` (1-based): a function of (seed, step) only, so that a run
    resumed from a checkpoint sees exactly the batches of an uninterrupted one."""
    n = len(task.train)
    per_epoch = max(n // batch_size, 1)
    epoch, index = divmod(step - 1, per_epoch)
    rows = _epoch_order(seed, epoch, n)[index * batch_size:(index + 1) * batch_size]
    return task.train.ids[rows], task.train.targets[rows]


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n training rows in an epoch (read-only: made once per epoch, not per
    step)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False
    return order


# ----- optimizers --------------------------------------------------------------------------------
def build_optimizer(model: Transformer, config: TrainConfig, lr: float | None = None, *,
                    sage_patterns: Sequence[str] | None = None):
    """The optimizer ``config.optimizer`` over the model's parameters.

    Param groups come from :func:`minisage.spec.split.sage_param_groups`: SAGE on the parameters
    whose names contain one of ``sage_patterns`` -- by default the official split
    (``SAGE_PATTERNS``: attention and feed-forward weights and biases) for a SAGE preset, none for
    a plain one; ``("",)`` matches every name -- and the plain rule elsewhere. Weight decay
    ``config.weight_decay`` applies to every parameter except biases and LayerNorms; a SAGE
    preset gets ``config.beta3``. Other hyperparameters keep the preset's defaults; ``lr``
    defaults to ``config.lr``.
    """
    lr = config.lr if lr is None else lr
    sage = spec.rule_class(config.optimizer).sage
    if sage_patterns is None:
        sage_patterns = SAGE_PATTERNS if sage else ()
    groups = optim.sage_param_groups(model.named_parameters(), sage_patterns=sage_patterns,
                                     weight_decay=config.weight_decay)
    hparams = {"beta3": config.beta3} if sage else {}
    return optim.make(config.optimizer, groups, lr=lr, **hparams)


# ----- the run -------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What :func:`train` returns: the trained model and optimizer, the metrics ``history`` (one
    row per evaluation; ``final`` is the last), the recorder (None when ``record_every`` is 0)
    and the speed (``train_seconds`` excludes evaluation)."""

    config: TrainConfig
    history: list[dict]  # one row per evaluation
    recorder: SensitivityRecorder | None
    model: Transformer
    optimizer: Any
    train_seconds: float
    steps_per_second: float

    @property
    def final(self) -> dict:
        return self.history[-1]


def pretrain_config(config: TrainConfig) -> TrainConfig:
    """The config of the pretraining stage of a run of ``config``: masked-LM with bert-adamw at
    ``pretrain_lr`` for ``pretrain_steps`` steps, seed 0 (every fine-tuning run of the task starts
    from the same pretrained model), evaluated at its last step, nothing recorded."""
    return replace(config, optimizer="bert-adamw", lr=config.pretrain_lr,
                   steps=config.pretrain_steps, record_every=0, eval_every=config.pretrain_steps,
                   seed=0)


def pretrained_state(config: TrainConfig, task: Task, progress: bool = False, *,
                     checkpoint_path: str | None = None,
                     resume: ckpt.Checkpoint | None = None) -> dict | None:
    """Weights after the task's pretraining stage (:func:`pretrain_config`); None when the task has
    none or ``config.pretrain_steps`` is 0.

    ``checkpoint_path``: Ctrl-C stops the stage between two steps, saves it there (a checkpoint of
    stage ``"pretrain"`` holding the run's ``config``) and raises :class:`TrainingInterrupted`.
    ``resume``: such a checkpoint, to finish the stage from (bit for bit the uninterrupted one).
    """
    if task.pretrain is None or config.pretrain_steps == 0:
        if resume is not None:
            raise UsageError(f"{resume.path}: a pretraining checkpoint, but this run has no "
                             "pretraining stage")
        return None
    result = train(pretrain_config(config), task=task.pretrain, progress=progress,
                   label="pretrain", checkpoint_path=checkpoint_path, resume=resume,
                   pretraining_for=config)
    return result.model.state_dict()


def _hooks(callbacks: Iterable[Any], name: str) -> list:
    """The bound method ``name`` of every callback that has one, in order."""
    return [getattr(cb, name) for cb in callbacks if callable(getattr(cb, name, None))]


def train(config: TrainConfig, task: Task | None = None, *, init_state: dict | None = None,
          callbacks: Sequence[Any] = (), sage_patterns: Sequence[str] | None = None,
          progress: bool = False, label: str = "", checkpoint_path: str | None = None,
          resume: ckpt.Checkpoint | None = None, stop_at: int | None = None,
          pretraining_for: TrainConfig | None = None) -> RunResult:
    """Train a fresh Transformer on ``task`` (default: ``make_task(config.task)``).

    Each step: the batch ``batch_for_step(task, config.seed, step, config.batch_size)``, its loss
    and backward pass, global gradient clipping at ``config.clip_norm``, then the callbacks'
    ``on_gradients``, the optimizer step at the scheduled lr, and the callbacks' ``on_step_end``;
    every ``config.eval_every`` steps (and at the last) a row of metrics joins the history.

    Callbacks: objects with either or both of these methods, called in the order given, for
    every step (1-based):

    - ``on_gradients(step, model, optimizer)``: the gradients are computed and clipped, the
      parameters not yet updated (the place to measure sensitivities: the recorder does);
    - ``on_step_end(step, model, optimizer, loss)``: the parameters are updated; ``loss`` is the
      batch loss (a float) of this step.

    A callback that changes parameters or gradients changes the run. When
    ``config.record_every`` is set, a :class:`SensitivityRecorder` is the first callback.

    Other arguments: ``init_state``: parameters to load before training (e.g. a pretrained body;
    missing names, like a new head, keep their seeded initialization). ``sage_patterns``: which
    parameters get SAGE (see :func:`build_optimizer`). ``progress``: a progress bar on stderr
    (only in a terminal or a notebook), named ``label``. ``resume``: a loaded checkpoint to
    continue (see :func:`check_resume` and :func:`restore_checkpoint`). ``checkpoint_path``: if
    given (it is checked writable first), Ctrl-C is deferred to the end of the step (a SIGINT
    handler while the loop runs, main thread only; see :func:`deferred_interrupt`), the run is
    saved there and :class:`TrainingInterrupted` is raised; a Ctrl-C during the last step lets
    the run finish. ``stop_at``: end after that step, as an interrupted run would (the schedule
    still spans ``config.steps``). ``pretraining_for``: set by :func:`pretrained_state`: this is
    the pretraining stage of a run of that config, which its checkpoints hold.
    """
    stage = "train" if pretraining_for is None else "pretrain"
    if checkpoint_path is not None:
        check_writable(checkpoint_path)
    if resume is not None:
        check_resume(pretraining_for or config, resume, stage)
    if task is None:
        task = make_task(config.task, seed=config.seed, n_train=config.labels)
    model = Transformer(config.model_config(task), seed=config.seed)
    if init_state is not None:
        model.load_state_dict(init_state, strict=False)
    optimizer = build_optimizer(model, config, sage_patterns=sage_patterns)
    params = model.parameters()
    recorder = None
    if config.record_every:
        checkpoints = tuple(sorted({max(1, round(config.steps * f)) for f in (0.1, 0.4, 1.0)}))
        recorder = SensitivityRecorder(shadow_rule(config.optimizer, config.lr, config.beta3),
                                       every=config.record_every, checkpoints=checkpoints)
        callbacks = (recorder, *callbacks)
    on_gradients = _hooks(callbacks, "on_gradients")
    on_step_end = _hooks(callbacks, "on_step_end")
    history: list[dict] = []
    start_step = 1
    if resume is not None:
        start_step = restore_checkpoint(resume, model, optimizer, recorder, history) + 1
    last_step = _last_step(config, stop_at, start_step)
    lr_at = lr_schedule(config)
    # training accuracy (for the generalization gap) is measured on a fixed part of the train split
    train_probe, val_probe = task.train.head(config.eval_rows), task.val.head(config.eval_rows)
    bar = _progress_bar(config.steps, start_step - 1, label or config.optimizer, progress)
    train_seconds = 0.0
    with bar, deferred_interrupt(enabled=checkpoint_path is not None) as interrupt:
        for step in range(start_step, last_step + 1):
            tick = time.perf_counter()
            ids, targets = batch_for_step(task, config.seed, step, config.batch_size)
            for p in params:  # model.zero_grad(), without walking the modules again
                p.grad = None
            loss, _ = loss_and_logits(model, task, ids, targets)
            loss.backward()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss became {loss_value} at step {step}")
            if config.clip_norm:
                optim.clip_grad_norm_(params, config.clip_norm)
            for hook in on_gradients:
                hook(step, model, optimizer)
            optimizer.step(lr=lr_at(step))
            train_seconds += time.perf_counter() - tick
            for hook in on_step_end:
                hook(step, model, optimizer, loss_value)
            if step == config.steps or config.eval_every and step % config.eval_every == 0:
                row = {"step": step, "train_loss_batch": loss_value}
                train_metrics = evaluate(model, task, train_probe)
                val_metrics = evaluate(model, task, val_probe)
                row.update({f"train_{k}": v for k, v in train_metrics.items()})
                row.update({f"val_{k}": v for k, v in val_metrics.items()})
                row["gap"] = row["train_accuracy"] - row["val_accuracy"]
                history.append(row)
                bar.set_postfix_str(f"loss {loss_value:.3f} val acc {row['val_accuracy']:.3f}",
                                    refresh=False)
            bar.update(1)
            if interrupt["pending"] and step < last_step:  # Ctrl-C: stop between whole steps
                path = None
                if checkpoint_path is not None:
                    path = os.path.abspath(checkpoint_path)
                    save_checkpoint(path, pretraining_for or config, model, optimizer, recorder,
                                    history, step=step, stage=stage)
                raise TrainingInterrupted(step, path, stage=stage, total=config.steps)
    done = last_step - start_step + 1
    return RunResult(config, history, recorder, model, optimizer, train_seconds,
                     done / train_seconds if train_seconds else float("nan"))


def _last_step(config: TrainConfig, stop_at: int | None, start_step: int) -> int:
    """The step this call ends after: ``stop_at`` (checked) or ``config.steps``."""
    if stop_at is None:
        return config.steps
    if (isinstance(stop_at, bool) or not isinstance(stop_at, int)
            or not start_step <= stop_at <= config.steps):
        raise UsageError(f"train: stop_at must be an integer in [{start_step}, {config.steps}] "
                         f"(from the first step of this call to config.steps), got {stop_at!r}")
    return stop_at


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def _progress_bar(total: int, done: int, label: str, enabled: bool):
    """A tqdm bar on stderr (a widget in a notebook), drawn only if ``enabled`` and stderr is a
    terminal or this is a notebook."""
    show = enabled and (sys.stderr.isatty() or _in_notebook())
    return tqdm(total=total, initial=done, desc=label, unit="step", disable=not show,
                leave=False, dynamic_ncols=True)


# ----- checkpoints ---------------------------------------------------------------------------
def save_checkpoint(path, config: TrainConfig, model: Transformer, optimizer,
                    recorder: SensitivityRecorder | None, history: list[dict], step: int, *,
                    stage: str = "train") -> None:
    """Save everything needed to continue the run bit for bit after ``step``. ``stage``
    ``"pretrain"``: the pieces are the pretraining stage's of a run of ``config``."""
    ckpt.save(path, ckpt.Checkpoint(
        config=asdict(config), step=step, model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        recorder=recorder.state_dict() if recorder is not None else None,
        history=history, rng=model.rng.bit_generator.state, stage=stage))


def config_of(checkpoint: ckpt.Checkpoint) -> TrainConfig:
    """The TrainConfig a checkpoint was saved with (CheckpointError naming the file if its
    config is not one)."""
    try:
        return TrainConfig.from_dict(checkpoint.config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{checkpoint.path}: bad config ({err})") from None


def check_resume(config: TrainConfig, checkpoint: ckpt.Checkpoint, stage: str = "train") -> None:
    """Check that ``config`` continues the run saved in ``checkpoint`` (whose stage must be
    ``stage``): every field as saved, except the stage's own step count (``steps``; for a
    pretraining checkpoint ``pretrain_steps``), which may differ only where the stage can be
    extended (the constant schedule; see the module docstring) and must leave a step to take. A
    pretraining checkpoint may also change ``steps``: fine-tuning has not started. ConfigError
    names the field."""
    path = checkpoint.path or "the checkpoint"
    if checkpoint.stage != stage:
        holds = {"train": "a run", "pretrain": "the pretraining stage of a run"}
        raise CheckpointError(f"{path} holds {holds[checkpoint.stage]}, not {holds[stage]}")
    saved = config_of(checkpoint)
    own = "steps" if stage == "train" else "pretrain_steps"
    for f in fields(TrainConfig):
        given, kept = getattr(config, f.name), getattr(saved, f.name)
        if f.name not in (own, "steps") and given != kept:
            raise ConfigError(f.name, f"is {given!r}, but {path} was saved with {kept!r}: a "
                                      f"resumed run keeps its settings (only {own} may change)",
                              prefix="resume")
    given, kept, done = getattr(config, own), getattr(saved, own), checkpoint.step
    if given == kept > done:
        return
    if given == kept:
        extend = (f"give more {own} (> {done}) to extend it" if config.schedule == "constant"
                  else _cannot_extend(config.schedule))
        whole = "run" if stage == "train" else "pretraining stage"
        raise UsageError(f"{path} holds the whole {whole} (step {done} of {kept}): nothing to "
                         f"resume; {extend}")
    if config.schedule != "constant":
        raise ConfigError(own, f"is {given}, but {path} was saved with {kept}: "
                               f"{_cannot_extend(config.schedule)}", prefix="resume")
    if given <= done:
        raise ConfigError(own, f"is {given}, but {path} is already at step {done}: give more "
                               "than that", prefix="resume")


def _cannot_extend(schedule: str) -> str:
    return (f"the {schedule} schedule sets every step's lr from the total number of steps, so "
            "only a run with the constant schedule can be extended")


def restore_checkpoint(checkpoint: ckpt.Checkpoint, model: Transformer, optimizer,
                       recorder: SensitivityRecorder | None, history: list) -> int:
    """Put a loaded checkpoint's pieces into a freshly built model, optimizer and recorder, and
    its history into ``history``; returns the step it was saved at. A mismatch raises
    CheckpointError naming the file."""
    try:
        model.load_state_dict(checkpoint.model)
        if checkpoint.optimizer is not None:
            optimizer.load_state_dict(checkpoint.optimizer)
        if checkpoint.rng is not None:
            model.rng.bit_generator.state = checkpoint.rng
        if recorder is not None and checkpoint.recorder is not None:
            recorder.load_state_dict(checkpoint.recorder)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{checkpoint.path}: does not match this model/optimizer "
                              f"({err})") from None
    history[:] = checkpoint.history
    return checkpoint.step
