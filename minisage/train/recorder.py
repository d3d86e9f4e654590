"""The sensitivity recorder: a training callback that measures I, Ibar, Ihat, U and r for any run.

It watches the SAGE group's matrices (:func:`sage_matrices`: the 2-D parameters that the official
split of :mod:`minisage.spec.split` gives SAGE) and measures them with a SAGE spec rule, its
*shadow rule*: at every step (after clipping, before the update) it runs the rule's per-matrix
clipping and its multiplier block (``rule.multiplier_into``, the SAGE part of the rule's update)
over the watched matrices, as one flat array (the block is elementwise, so this changes no
rounding), with its own copy of the sensitivity average, and keeps the rule's trace at the
recorded steps. So the numbers are exactly the ones the rule
computes -- I, Ibar, the bias-corrected Ihat where the rule corrects, U and r with the rule's own
epsilon and clipping -- and need no second statement of them.

- A SAGE run is measured with its own rule (the same preset and beta3 as its optimizer): the
  recorder's r is, bit for bit, the multiplier the optimizer applies.
- A run without SAGE is measured with the SAGE rule its optimizer class pairs with (``bert-adamw``
  -> ``adamw-sage``, ``bert-adamax`` -> ``adamax-sage``, ``adamw`` -> ``adam-sage``; other presets
  -> ``adam-sage``): what SAGE *would* compute at each point of that run's trajectory. Its
  optimizer never uses it; plots say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minisage import spec
from minisage.optim import optimizer_class
from minisage.spec.split import official_group
from minisage.stats import spearman

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: the trace keys kept per layer, as quantiles
QUANTITIES = ("sensitivity", "sensitivity_ema", "sensitivity_ema_hat", "uncertainty",
              "lr_multiplier")
DECILES = 10


def is_sage_matrix(name: str, p) -> bool:
    """Whether a parameter is an attention or feed-forward weight matrix: 2-D, and in the SAGE
    group of the official split."""
    sage, _ = official_group(name)
    return p.ndim == 2 and sage


def sage_matrices(model) -> list[tuple[str, Any]]:
    """``(name, parameter)`` of the attention and feed-forward weight matrices."""
    return [(n, p) for n, p in model.named_parameters() if is_sage_matrix(n, p)]


def shadow_preset(preset: str) -> str:
    """The SAGE preset that measures a run of ``preset``: itself if it is SAGE, else the SAGE
    preset its optimizer class pairs with (``adam-sage`` where there is none)."""
    if spec.rule_class(preset).sage:
        return preset
    return optimizer_class(preset).sage_preset or "adam-sage"


def shadow_rule(preset: str, lr: float, beta3: float) -> spec.Rule:
    """The shadow rule of a run of ``preset`` (see the module docstring), with ``beta3``."""
    name = shadow_preset(preset)
    return spec.make(name, lr=lr, beta3=beta3)


def decile_means(x: np.ndarray, y: np.ndarray, deciles: int = DECILES) -> list[float]:
    """The mean of ``y`` in each decile of ``x`` (deciles by rank, so ties cannot empty one)."""
    order = np.argsort(x, kind="stable")
    return [float(part.mean()) for part in np.array_split(y[order], deciles)]


@dataclass
class SensitivityRecorder:
    """Records how the SAGE matrices' sensitivities evolve, for any optimizer; a training callback.

    ``rule``: the shadow rule (:func:`shadow_rule`). Every ``every`` steps it stores:

    - ``rows``: per layer and quantity (``QUANTITIES``) the quantiles ``QUANTILES``;
    - ``mechanism``: pooled over all watched entries, the median of r, Spearman's rank
      correlation of Ihat (the average in the ratio) and r, and the mean of r in each decile of
      Ihat -- whether r follows sensitivity;

    and at the steps in ``checkpoints`` a sample of up to ``sample_size`` of all Ihat and r values
    (``histograms[step]``). ``first_sensitivity`` keeps I of every watched entry at the first step
    observed, and ``initial`` the parameters before it: how far entries moved, by their starting
    sensitivity, is measured against them.
    """

    rule: spec.Rule
    every: int = 10
    checkpoints: tuple[int, ...] = ()
    sample_size: int = 20000
    #: per matrix ``{"step": t, "sensitivity_ema": Ibar}``: the shadow rule's state that it uses
    states: dict[str, dict] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # one per (step, layer, quantity)
    mechanism: list[dict] = field(default_factory=list)  # one per recorded step
    histograms: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    first_sensitivity: dict[str, np.ndarray] = field(default_factory=dict)
    initial: dict[str, np.ndarray] = field(default_factory=dict)
    _scratch: spec.Scratch = field(default_factory=spec.Scratch, repr=False)
    _watched: dict[str, bool] = field(default_factory=dict, repr=False)
    _model: Any = field(default=None, repr=False)
    _named: list = field(default_factory=list, repr=False)
    #: names of a group of matrices -> (bounds, their Ibar as one flat array)
    _flat: dict[tuple[str, ...], tuple[list[int], np.ndarray]] = field(default_factory=dict,
                                                                         repr=False)

    def on_gradients(self, step: int, model, optimizer) -> None:
        """The training callback: observe the model's gradients at ``step``."""
        if self._model is not model:  # its parameters, listed once
            self._model, self._named = model, list(model.named_parameters())
        self.observe(step, self._named)

    def observe(self, step: int, named_params) -> None:
        """Advance the shadow rule on the current gradients of ``named_params``; record ``step``."""
        record = bool(self.every) and step % self.every == 0
        snapshot = step in self.checkpoints
        groups: dict[tuple, list[tuple[str, Any]]] = {}  # (dtype, step count) -> matrices
        for name, p in named_params:
            if p.grad is None:
                continue
            watched = self._watched.get(name)
            if watched is None:  # the split's patterns are matched once per name
                watched = self._watched[name] = is_sage_matrix(name, p)
            if watched:
                step_count = self.states[name]["step"] if name in self.states else 0
                groups.setdefault((p.data.dtype, step_count), []).append((name, p))
        traces = {}
        for (_, step_count), group in groups.items():
            first = [name for name, _ in group if name not in self.first_sensitivity]
            keep = record or snapshot or bool(first)
            traces.update(self._advance(group, step_count, keep))
            for name, p in group:
                if name in first:
                    self.first_sensitivity[name] = traces[name]["sensitivity"]
                    self.initial[name] = p.data.copy()
        if not traces or not (record or snapshot):  # traces: only at these steps
            return
        if record:
            for name, trace in traces.items():
                # (quantiles, quantities): one call per layer, the numbers of one per quantity
                qs = np.quantile(np.stack([trace[k].ravel() for k in QUANTITIES]), QUANTILES,
                                 axis=1)
                for quantity, column in zip(QUANTITIES, qs.T):
                    self.rows.append({"step": step, "layer": name, "quantity": quantity,
                                      **{f"q{int(q * 100):02d}": float(v)
                                         for q, v in zip(QUANTILES, column)}})
        ihat = np.concatenate([t["sensitivity_ema_hat"].ravel() for t in traces.values()])
        r = np.concatenate([t["lr_multiplier"].ravel() for t in traces.values()])
        if record:
            rho = spearman(ihat, r)
            self.mechanism.append({"step": step, "r_median": float(np.median(r)),
                                   "r_mean": float(np.mean(r)), "spearman": float(rho),
                                   "r_by_decile": decile_means(ihat, r)})
        if snapshot:
            rng = np.random.default_rng(step)
            sample = {"sensitivity_ema_hat": ihat, "lr_multiplier": r}
            if len(r) > self.sample_size:
                keep = rng.choice(len(r), self.sample_size, replace=False)
                sample = {k: v[keep] for k, v in sample.items()}
            self.histograms[step] = sample

    def _advance(self, group: list[tuple[str, Any]], step: int, keep: bool) -> dict[str, dict]:
        """One step of the shadow rule on matrices of one dtype and step count (``step``, before
        this one): its checks and clipping factors (``rule.prepare_many``: errors name the
        matrix, before anything is written), then, over the matrices as one flat array, its
        multiplier block (which advances Ibar in place). Returns ``{name: trace}`` (I, Ibar,
        Ihat, U and r in each matrix's shape) when ``keep``, else ``{}``."""
        names = tuple(name for name, _ in group)
        params = [q.data for _, q in group]
        # the rule checks a whole state, of which only the shapes and dtypes of its arrays
        # matter here (the recorder keeps Ibar alone): the matrix itself stands in for each
        stand_ins = [{"step": step, **dict.fromkeys(self.rule.array_keys, q)} for q in params]
        preps = self.rule.prepare_many(params, [q.grad for _, q in group], stand_ins,
                                       names=names, scratch=self._scratch)
        bounds, ibar = self._flat_ema(names, params)
        total, dtype = bounds[-1], params[0].dtype
        p = np.concatenate([q.reshape(-1) for q in params],
                           out=self._scratch.take(3, (total,), dtype))
        g = np.concatenate([prep.grad.reshape(-1) for prep in preps],
                           out=self._scratch.take(0, (total,), dtype))
        for lo, hi, prep in zip(bounds, bounds[1:], preps):
            if prep.clip is not None:
                # g = g * c   (per matrix)
                g[lo:hi] *= prep.clip
        t = step + 1
        trace = {} if keep else None
        self.rule.multiplier_into(p, g, ibar, t, out=self._scratch.take(1, (total,), dtype),
                                  work=self._scratch.take(2, (total,), dtype), trace=trace)
        for name in names:
            self.states[name]["step"] = t
        if trace is None:
            return {}
        return {name: {k: v[lo:hi].reshape(q.shape) for k, v in trace.items()}
                for name, q, lo, hi in zip(names, params, bounds, bounds[1:])}

    def _flat_ema(self, names: tuple[str, ...], params: list[np.ndarray]
                  ) -> tuple[list[int], np.ndarray]:
        """The bounds of ``names`` in one flat array, and their Ibar as that array (each
        state's ``sensitivity_ema`` is then a view of it), made at the first step of a group."""
        cached = self._flat.get(names)
        if cached is not None:
            return cached
        bounds = np.cumsum([0] + [q.size for q in params]).tolist()
        ibar = np.concatenate([self.states[n]["sensitivity_ema"].reshape(-1) if n in self.states
                               else np.zeros(q.size, q.dtype) for n, q in zip(names, params)])
        for name, q, lo, hi in zip(names, params, bounds, bounds[1:]):
            step = self.states[name]["step"] if name in self.states else 0
            self.states[name] = {"step": step, "sensitivity_ema": ibar[lo:hi].reshape(q.shape)}
        # a matrix belongs to one flat array at a time
        self._flat = {k: v for k, v in self._flat.items() if not set(k) & set(names)}
        self._flat[names] = (bounds, ibar)
        return bounds, ibar

    def state_dict(self) -> dict[str, Any]:
        """What the recorder holds (copies), for checkpoints."""
        return {"states": {n: {k: (v if k == "step" else v.copy()) for k, v in s.items()}
                           for n, s in self.states.items()},
                "rows": [dict(r) for r in self.rows],
                "mechanism": [dict(m) for m in self.mechanism],
                "histograms": {s: {k: v.copy() for k, v in h.items()}
                               for s, h in self.histograms.items()},
                "first_sensitivity": {n: v.copy() for n, v in self.first_sensitivity.items()},
                "initial": {n: v.copy() for n, v in self.initial.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (checked first: a bad state changes nothing)."""
        keys = ("states", "rows", "mechanism", "histograms", "first_sensitivity", "initial")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"SensitivityRecorder.load_state_dict: missing {missing}")
        for key in ("first_sensitivity", "initial"):
            if not all(isinstance(v, np.ndarray) for v in state[key].values()):
                raise ValueError(f"SensitivityRecorder.load_state_dict: {key} must map names "
                                 "to arrays")
        if not all(isinstance(r, dict) for r in (*state["rows"], *state["mechanism"])):
            raise ValueError("SensitivityRecorder.load_state_dict: rows must be dicts")
        self.states = {str(n): {k: (int(v) if k == "step" else np.array(v)) for k, v in s.items()}
                       for n, s in state["states"].items()}
        self._flat = {}  # the flat arrays are made again from these states
        self.rows = [dict(r) for r in state["rows"]]
        self.mechanism = [dict(m) for m in state["mechanism"]]
        self.histograms = {int(s): {str(k): np.asarray(v).copy() for k, v in h.items()}
                           for s, h in state["histograms"].items()}
        self.first_sensitivity = {str(n): v.copy() for n, v in state["first_sensitivity"].items()}
        self.initial = {str(n): v.copy() for n, v in state["initial"].items()}
