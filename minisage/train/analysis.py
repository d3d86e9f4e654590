"""What is measured after training: pruning by sensitivity or magnitude (the statistics over seeds
are :mod:`minisage.stats`)."""

from __future__ import annotations

import math

import numpy as np

from minisage import spec
from minisage.nn import Transformer
from minisage.tasks import Task
from minisage.train.loop import evaluate, loss_and_logits
from minisage.train.recorder import sage_matrices


# ----- pruning -----------------------------------------------------------------------------------
def batch_sensitivity(model: Transformer, task: Task, n: int = 512) -> dict[str, np.ndarray]:
    """I = |p * dL/dp| of each SAGE matrix, the gradient taken over the first n training rows."""
    model.zero_grad()
    loss, _ = loss_and_logits(model, task, task.train.ids[:n], task.train.targets[:n])
    loss.backward()
    scores = {name: spec.sensitivity(p.data, p.grad) for name, p in sage_matrices(model)}
    model.zero_grad()
    return scores


def pruning_curve(model: Transformer, task: Task, fractions, criterion: str = "sensitivity",
                  scores: dict[str, np.ndarray] | None = None, split=None) -> list[dict]:
    """Zero the lowest-scoring fraction of the SAGE matrices' entries, for each fraction, and
    re-evaluate on ``split`` (default: the validation split). ``criterion``: "sensitivity"
    (|p * g|, from ``scores`` or computed on a training batch) or "magnitude" (|p|). The model
    is restored afterwards."""
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
            metrics = evaluate(model, task, task.val if split is None else split)
            curve.append({"fraction": float(fraction), "criterion": criterion,
                          "val_accuracy": metrics["accuracy"], "val_loss": metrics["loss"]})
    finally:
        for name, p in matrices:
            p.data[...] = saved[name]
    return curve


def nan_to_none(value):
    """``value`` (nested dicts and lists) with every non-finite float -- an undefined statistic,
    such as the interval of one seed -- replaced by None, for strict JSON (null)."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
