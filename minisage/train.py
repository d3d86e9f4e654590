"""Training: the loop, evaluation, the sensitivity recorder, pruning analysis and checkpoints.

``train(config)`` runs one training run of a task with any optimizer preset and returns a
:class:`RunResult` (history of metrics, recorder, model). The same seed gives identical numbers.
The command ``minisage train`` is this module's ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

import minisage.functional as F
from minisage import optim, spec
from minisage.autograd import no_grad
from minisage.nn import Transformer, TransformerConfig
from minisage.spec.split import SAGE_PATTERNS
from minisage.tasks import IGNORE, TASKS, Split, Task, make_task

TRAIN_PROBE = 1024  # rows of the train split evaluated for the training accuracy


# ----- configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run; the same config gives the same numbers."""

    task: str = "finetune"
    optimizer: str = "bert-adamw"  # any spec preset name
    lr: float = 1e-3
    steps: int = 200
    batch_size: int = 32
    weight_decay: float = 0.01
    clip_norm: float = 1.0  # global gradient-norm clipping; 0 turns it off
    schedule: str = "linear"  # constant | linear (warmup then linear decay) | cosine
    warmup: float = 0.1  # fraction of the steps
    eval_every: int = 25
    record_every: int = 10  # sensitivity recorder; 0 turns it off
    beta3: float = 0.75  # the recorder's (and SAGE's) sensitivity EMA
    seed: int = 0
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


# ----- optimizers --------------------------------------------------------------------------------
def build_optimizer(model: Transformer, config: TrainConfig, lr: float | None = None):
    """The optimizer ``config.optimizer`` over the model's parameters.

    SAGE presets use the official split: SAGE on the attention and feed-forward weights and biases,
    the same rule without the SAGE multiplier elsewhere (embeddings, LayerNorm, heads). Weight
    decay ``config.weight_decay`` applies to every parameter except biases and LayerNorms.
    Other hyperparameters keep the preset's defaults.
    """
    lr = config.lr if lr is None else lr
    named = list(model.named_parameters())
    sage = spec.rule_class(config.optimizer).sage
    groups = optim.sage_param_groups(named, sage_patterns=SAGE_PATTERNS if sage else (),
                                     weight_decay=config.weight_decay)
    return optim.make(config.optimizer, groups, lr=lr)


# ----- the sensitivity recorder ----------------------------------------------------------------
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class SensitivityRecorder:
    """Records how parameters' sensitivities evolve, for any optimizer.

    At every step (after clipping, before the update) it keeps, for each matrix in the SAGE group,
    the sensitivity I = |p * g| and its EMA Ibar (beta3, no bias correction: the paper's Ibar), so
    that AdamW and SAGE runs are measured the same way. Every ``every`` steps it stores per-layer
    quantiles of I, Ibar, U = |I - Ibar| and the multiplier r = U / (Ibar + eps); at the
    ``checkpoints`` it keeps a sample of all Ibar and r values for histograms.
    """

    every: int = 10
    beta3: float = 0.75
    eps: float = 1e-12
    checkpoints: tuple[int, ...] = ()
    sample_size: int = 20000
    sensitivity_ema: dict[str, np.ndarray] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # one per (step, layer, quantity)
    histograms: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def observe(self, step: int, named_params) -> None:
        record = self.every and step % self.every == 0
        snapshot = step in self.checkpoints
        pooled = {"sensitivity_ema": [], "lr_multiplier": []}
        for name, p in named_params:
            if p.grad is None or not is_sage_matrix(name, p):
                continue
            sensitivity = spec.sensitivity(p.data, p.grad)
            previous = self.sensitivity_ema.get(name, np.zeros_like(sensitivity))
            ema = spec.sensitivity_ema(previous, sensitivity, self.beta3)
            self.sensitivity_ema[name] = ema
            if not (record or snapshot):
                continue
            uncertainty = spec.uncertainty(sensitivity, ema)
            multiplier = spec.lr_multiplier(uncertainty, ema, self.eps)
            if record:
                for quantity, values in (("sensitivity", sensitivity), ("sensitivity_ema", ema),
                                         ("uncertainty", uncertainty),
                                         ("lr_multiplier", multiplier)):
                    qs = np.quantile(values, QUANTILES)
                    self.rows.append({"step": step, "layer": name, "quantity": quantity,
                                      **{f"q{int(q * 100):02d}": float(v)
                                         for q, v in zip(QUANTILES, qs)}})
            if snapshot:
                pooled["sensitivity_ema"].append(ema.ravel())
                pooled["lr_multiplier"].append(multiplier.ravel())
        if snapshot and pooled["sensitivity_ema"]:
            rng = np.random.default_rng(step)
            sample = {}
            for key, parts in pooled.items():
                values = np.concatenate(parts)
                if len(values) > self.sample_size:
                    values = rng.choice(values, self.sample_size, replace=False)
                sample[key] = values
            self.histograms[step] = sample


# ----- the run -------------------------------------------------------------------------------
@contextlib.contextmanager
def deferred_interrupt():
    """Within the block, Ctrl-C only sets ``flag["pending"]``, so that the loop can stop between
    two whole steps and save a consistent checkpoint. (Signals exist in the main thread only.)"""
    flag = {"pending": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: flag.update(pending=True))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)



@dataclass
class RunResult:
    config: TrainConfig
    history: list[dict]  # one row per evaluation
    recorder: SensitivityRecorder | None
    model: Transformer
    optimizer: object
    train_seconds: float
    steps_per_second: float

    @property
    def final(self) -> dict:
        return self.history[-1]


def batch_for_step(task: Task, seed: int, step: int, batch_size: int):
    """Training batch number ``step`` (1-based): a function of (seed, step) only, so that a run
    resumed from a checkpoint sees exactly the batches of an uninterrupted one."""
    n = len(task.train)
    per_epoch = max(n // batch_size, 1)
    epoch, index = divmod(step - 1, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    rows = order[index * batch_size:(index + 1) * batch_size]
    return task.train.ids[rows], task.train.targets[rows]


def pretrained_state(config: TrainConfig, task: Task, progress: bool = False) -> dict:
    """Weights after the task's pretraining stage (masked-LM, AdamW), deterministic in the seed
    of the *task* so that every fine-tuning run starts from the same pretrained model."""
    stage = replace(
        config, optimizer="bert-adamw", lr=config.pretrain_lr, steps=config.pretrain_steps,
        record_every=0, eval_every=config.pretrain_steps, seed=0,
    )
    result = train(stage, task=task.pretrain, progress=progress, label="pretrain")
    return result.model.state_dict()


def train(config: TrainConfig, task: Task | None = None, init_state: dict | None = None,
          progress: bool = False, label: str = "", checkpoint_path: str | None = None,
          resume: dict | None = None, stop_at: int | None = None) -> RunResult:
    """Train a fresh Transformer on ``task`` (default: ``make_task(config.task)``).

    ``init_state``: parameters to load before training (e.g. a pretrained body; missing names, like
    a new head, keep their seeded initialization). ``resume``: a loaded checkpoint to continue.
    ``checkpoint_path``: where Ctrl-C saves a checkpoint. ``stop_at``: end after that step, as
    an interrupted run would (the schedule still spans ``config.steps``).
    """
    task = make_task(config.task) if task is None else task
    model = Transformer(config.model_config(task), seed=config.seed)
    if init_state is not None:
        model.load_state_dict(init_state, strict=False)
    optimizer = build_optimizer(model, config)
    named = list(model.named_parameters())
    params = [p for _, p in named]
    checkpoints = tuple(sorted({max(1, round(config.steps * f)) for f in (0.1, 0.4, 1.0)}))
    recorder = None
    if config.record_every:
        recorder = SensitivityRecorder(every=config.record_every, beta3=config.beta3,
                                       checkpoints=checkpoints)
    history: list[dict] = []
    start_step = 1
    if resume is not None:
        from minisage.checkpoint import restore

        start_step = restore(resume, model, optimizer, recorder, history) + 1
    lr_at = lr_schedule(config)
    # training accuracy (for the generalization gap) is measured on a fixed part of the train split
    train_probe = Split(task.train.ids[:TRAIN_PROBE], task.train.targets[:TRAIN_PROBE])
    bar = ProgressBar(config.steps, label or config.optimizer, enabled=progress)
    train_seconds = 0.0
    with deferred_interrupt() as interrupt:
        for step in range(start_step, (stop_at or config.steps) + 1):
            tick = time.perf_counter()
            ids, targets = batch_for_step(task, config.seed, step, config.batch_size)
            model.zero_grad()
            loss, _ = loss_and_logits(model, task, ids, targets)
            loss.backward()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
            if config.clip_norm:
                optim.clip_grad_norm_(params, config.clip_norm)
            if recorder is not None:
                recorder.observe(step, named)
            optimizer.step(lr=lr_at(step))
            train_seconds += time.perf_counter() - tick
            if step % config.eval_every == 0 or step == config.steps:
                row = {"step": step, "train_loss_batch": loss.item()}
                train_metrics = evaluate(model, task, train_probe)
                val_metrics = evaluate(model, task, task.val)
                row.update({f"train_{k}": v for k, v in train_metrics.items()})
                row.update({f"val_{k}": v for k, v in val_metrics.items()})
                row["gap"] = row["train_accuracy"] - row["val_accuracy"]
                history.append(row)
                bar.update(step, f"loss {loss.item():.3f} val acc {row['val_accuracy']:.3f}")
            else:
                bar.update(step)
            if interrupt["pending"]:  # Ctrl-C: stop between two whole steps
                bar.close()
                if checkpoint_path:
                    from minisage.checkpoint import save

                    save(checkpoint_path, config, model, optimizer, recorder, history, step=step)
                    print(f"\ninterrupted: saved a checkpoint at step {step} to "
                          f"{os.path.abspath(checkpoint_path)} (continue with --resume "
                          f"{os.path.abspath(checkpoint_path)})", file=sys.stderr)
                raise KeyboardInterrupt
    bar.close()
    done = (stop_at or config.steps) - start_step + 1
    return RunResult(config, history, recorder, model, optimizer, train_seconds,
                     done / train_seconds if train_seconds else float("nan"))


# ----- pruning analysis ------------------------------------------------------------------------
def is_sage_matrix(name: str, p) -> bool:
    """Whether a parameter is an attention or feed-forward weight matrix (SAGE group, 2-D)."""
    return p.ndim == 2 and any(pattern in name for pattern in SAGE_PATTERNS)


def sage_matrices(model: Transformer) -> list[tuple[str, object]]:
    """The attention and feed-forward weight matrices (the SAGE group's matrices)."""
    return [(n, p) for n, p in model.named_parameters() if is_sage_matrix(n, p)]


def batch_sensitivity(model: Transformer, task: Task, n: int = 512) -> dict[str, np.ndarray]:
    """I = |p * dL/dp| of each SAGE matrix, the gradient taken over the first n training rows."""
    model.zero_grad()
    loss, _ = loss_and_logits(model, task, task.train.ids[:n], task.train.targets[:n])
    loss.backward()
    scores = {name: spec.sensitivity(p.data, p.grad) for name, p in sage_matrices(model)}
    model.zero_grad()
    return scores


def pruning_curve(model: Transformer, task: Task, fractions, criterion: str = "sensitivity",
                  scores: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Zero the lowest-scoring fraction of the SAGE matrices' entries, for each fraction, and
    re-evaluate on the validation split. ``criterion``: "sensitivity" (|p * g|, from ``scores``
    or computed on a training batch) or "magnitude" (|p|). The model is restored afterwards."""
    matrices = sage_matrices(model)
    if criterion == "magnitude":
        scores = {n: np.abs(p.data) for n, p in matrices}
    elif criterion == "sensitivity":
        scores = scores if scores is not None else batch_sensitivity(model, task)
    else:
        raise ValueError(f"pruning_curve: criterion must be 'sensitivity' or 'magnitude', "
                         f"got {criterion!r}")
    saved = {n: p.data.copy() for n, p in matrices}
    all_scores = np.concatenate([scores[n].ravel() for n, _ in matrices])
    curve = []
    try:
        for fraction in fractions:
            k = int(round(fraction * all_scores.size))
            # entries ranked globally; ties broken by position, so exactly k are zeroed
            order = np.argsort(all_scores, kind="stable")[:k]
            prune = np.zeros(all_scores.size, dtype=bool)
            prune[order] = True
            offset = 0
            for name, p in matrices:
                p.data[...] = np.where(prune[offset:offset + p.size].reshape(p.shape), 0,
                                       saved[name])
                offset += p.size
            metrics = evaluate(model, task, task.val)
            curve.append({"fraction": float(fraction), "criterion": criterion,
                          "val_accuracy": metrics["accuracy"], "val_loss": metrics["loss"]})
    finally:
        for name, p in matrices:
            p.data[...] = saved[name]
    return curve


# ----- progress ----------------------------------------------------------------------------------
class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, label: str, enabled: bool = True, width: int = 28):
        self.total, self.label, self.width = total, label, width
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()
        self.message = ""
        self.last_draw = 0.0

    def update(self, step: int, message: str | None = None) -> None:
        if not self.enabled:
            return
        self.message = message or self.message
        now = time.perf_counter()
        if now - self.last_draw < 0.1 and step < self.total and message is None:
            return
        self.last_draw = now
        filled = int(self.width * step / self.total)
        rate = step / max(now - self.start, 1e-9)
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r{self.label:>12} [{bar}] {step}/{self.total} "
                         f"{rate:5.1f} it/s {self.message}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ----- the `minisage train` command ------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--task", default=defaults.task, choices=sorted(TASKS))
    parser.add_argument("--optimizer", default=defaults.optimizer,
                        help=f"a spec preset: {', '.join(spec.presets())} "
                        f"(default {defaults.optimizer})")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--clip-norm", type=float, default=defaults.clip_norm,
                        help="global gradient-norm clipping (0: off)")
    parser.add_argument("--schedule", default=defaults.schedule,
                        choices=("constant", "linear", "cosine"))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dtype", default=defaults.dtype, choices=("float64", "float32"))
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--save", metavar="PATH", help="write a checkpoint (.npz) at the end")
    parser.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from minisage import checkpoint

    if args.optimizer not in spec.presets():
        raise ValueError(f"unknown optimizer {args.optimizer!r}; presets: "
                         f"{', '.join(spec.presets())}")
    for name in ("steps", "batch_size", "eval_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    config = TrainConfig(
        task=args.task, optimizer=args.optimizer, lr=args.lr, steps=args.steps,
        batch_size=args.batch_size, weight_decay=args.weight_decay, clip_norm=args.clip_norm,
        schedule=args.schedule, seed=args.seed, dtype=args.dtype, eval_every=args.eval_every,
    )
    resume = None
    if args.resume:
        resume = checkpoint.load(args.resume)
        config = resume["config"]
    task = make_task(config.task)
    init_state = None
    if task.pretrain is not None and resume is None:
        init_state = pretrained_state(config, task, progress=not args.quiet)
    interrupted_path = args.save or f"{config.task}-{config.optimizer}-interrupted.npz"
    try:
        result = train(config, task, init_state=init_state, progress=not args.quiet,
                       checkpoint_path=interrupted_path, resume=resume)
    except KeyboardInterrupt:
        return 130
    final = result.final
    print(json.dumps({"config": asdict(config), "final": final,
                      "steps_per_second": round(result.steps_per_second, 2)}, indent=2))
    if args.save:
        checkpoint.save(args.save, config, result.model, result.optimizer, result.recorder,
                        result.history, step=config.steps)
        print(f"saved checkpoint to {os.path.abspath(args.save)}")
    return 0
