"""The sensitivity recorder: a training callback that measures I, Ibar, U and r for any optimizer.

It watches the SAGE group's matrices (:func:`sage_matrices`: 2-D parameters that the official
split of :mod:`minisage.spec.split` gives SAGE), whatever optimizer trains them, so that AdamW and
SAGE runs are measured the same way. The quantities are the spec's (``spec.sensitivity``,
``spec.sensitivity_ema``, ``spec.uncertainty``, ``spec.lr_multiplier``), in the paper's form:
Ibar without bias correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minisage import spec
from minisage.spec.split import official_group

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def is_sage_matrix(name: str, p) -> bool:
    """Whether a parameter is an attention or feed-forward weight matrix: 2-D, and in the SAGE
    group of the official split."""
    sage, _ = official_group(name)
    return p.ndim == 2 and sage


def sage_matrices(model) -> list[tuple[str, Any]]:
    """``(name, parameter)`` of the attention and feed-forward weight matrices."""
    return [(n, p) for n, p in model.named_parameters() if is_sage_matrix(n, p)]


@dataclass
class SensitivityRecorder:
    """Records how parameters' sensitivities evolve, for any optimizer; a training callback.

    At every step, in ``on_gradients`` (after clipping, before the update), it keeps for each
    SAGE matrix the sensitivity I = |p * g| and its EMA Ibar (``beta3``, no bias correction: the
    paper's Ibar). Every ``every`` steps it stores per-layer quantiles (``QUANTILES``) of I,
    Ibar, U = |I - Ibar| and the multiplier r = U / (Ibar + eps) as ``rows``; at the steps in
    ``checkpoints`` it keeps a sample of up to ``sample_size`` of all Ibar and r values in
    ``histograms[step]``, for histograms.
    """

    every: int = 10
    beta3: float = 0.75
    eps: float = 1e-12
    checkpoints: tuple[int, ...] = ()
    sample_size: int = 20000
    sensitivity_ema: dict[str, np.ndarray] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # one per (step, layer, quantity)
    histograms: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def on_gradients(self, step: int, model, optimizer) -> None:
        """The training callback: observe the model's gradients at ``step``."""
        self.observe(step, model.named_parameters())

    def observe(self, step: int, named_params) -> None:
        """Update Ibar from the current gradients of ``named_params`` and record ``step``."""
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

    def state_dict(self) -> dict[str, Any]:
        """What the recorder has measured so far (copies): ``sensitivity_ema``, ``rows``,
        ``histograms``."""
        return {"sensitivity_ema": {n: v.copy() for n, v in self.sensitivity_ema.items()},
                "rows": [dict(r) for r in self.rows],
                "histograms": {s: {k: v.copy() for k, v in h.items()}
                               for s, h in self.histograms.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (checked first: a bad state changes nothing)."""
        ema, rows, histograms = state["sensitivity_ema"], state["rows"], state["histograms"]
        if not all(isinstance(v, np.ndarray) for v in ema.values()):
            raise ValueError("SensitivityRecorder.load_state_dict: sensitivity_ema must map "
                             "names to arrays")
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError("SensitivityRecorder.load_state_dict: rows must be dicts")
        self.sensitivity_ema = {str(n): v.copy() for n, v in ema.items()}
        self.rows = [dict(r) for r in rows]
        self.histograms = {int(s): {str(k): np.asarray(v).copy() for k, v in h.items()}
                           for s, h in histograms.items()}
