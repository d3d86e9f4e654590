"""The stateful optimizer: param groups, state, ``step``, ``zero_grad``, ``state_dict``.

Every optimizer here is a thin loop over a :mod:`minisage.spec` rule, in two passes: the rule's
``prepare`` (as ``prepare_many``, a group at a time) checks every parameter's gradient and state and
works out its lr, step count and clipping factor (nothing is written, so an error leaves everything
as it was); then the rule's ``update_into`` -- the one statement of its update -- writes into the
parameters and their state in place. Small parameters that share a rule, an lr and a step count are
updated together as flat arrays, and every flat array block by block (``BLOCK_BYTES``: all passes of
the update over one block while it is in the cache, then the next). The numbers are those of the
pure ``rule.step``, bit for bit: the update is elementwise, so neither batching nor blocking changes
a rounding.

A parameter is any object with ``.data`` (a floating-point ndarray) and ``.grad`` (an ndarray of the
same shape, or None: such parameters are skipped, as in torch). ``params`` may be parameters,
``(name, parameter)`` pairs (e.g. ``model.named_parameters()``; names appear in error messages
and in the recorded traces), or a list of group dicts
``{"params": [...], "lr": ..., "sage": bool, ...}`` with per-group hyperparameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from minisage import spec
from minisage.spec.rule import Prepared, Scratch

_GROUP_KEYS = ("params", "names", "sage", "params_type")
#: parameters up to this many entries are updated together, as flat arrays (one pass of each NumPy
#: operation per batch instead of one per parameter)
SMALL = 1 << 15
#: the kernel runs over flat arrays in blocks of this many bytes per array, so that each of the
#: update's ~15 elementwise passes reads a block of the ~8 arrays (parameter, gradient, state,
#: scratch) from the cache, not from main memory (about 3x faster than whole 13 MB arrays)
BLOCK_BYTES = 1 << 18


def _is_named(entry: Any) -> bool:
    return isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)


class Optimizer:
    """Base class. Subclasses set ``plain_preset`` (and, for SAGE, ``sage_preset``)."""

    #: the spec preset of groups with ``sage=False``
    plain_preset: ClassVar[str] = ""
    #: the spec preset of groups with ``sage=True`` (None: this optimizer has no SAGE)
    sage_preset: ClassVar[str | None] = None
    #: the ``sage`` flag of a group that does not say
    sage_default: ClassVar[bool] = False

    def __init__(self, params: Iterable[Any], lr: float | None = None, *, record: bool = False,
                 **hparams: Any) -> None:
        if lr is not None:
            hparams["lr"] = lr
        self._hp_names = tuple(spec.defaults(self.sage_preset or self.plain_preset))
        for key in hparams:
            if key not in self._hp_names:
                raise ValueError(f"{type(self).__name__}: unknown hyperparameter {key!r}; "
                                 f"allowed: {', '.join(self._hp_names)}")
        base = spec.defaults(self.sage_preset or self.plain_preset)
        self.defaults: dict[str, Any] = {**base, **hparams}
        self.param_groups: list[dict[str, Any]] = []
        #: parameter index (its position over all groups) -> its state, as the spec rule keeps it
        self.state: dict[int, dict[str, Any]] = {}
        #: whether ``step`` keeps each parameter's trace in ``last_trace``
        self.record = bool(record)
        #: ``{name: trace}`` of the last step when ``record`` is on, else None
        self.last_trace: dict[str, dict[str, np.ndarray]] | None = None
        self._index: dict[int, int] = {}
        self._names: set[str] = set()
        self._rules: dict[int, tuple[tuple, spec.Rule]] = {}
        self._scratch = Scratch()
        self._flat = Scratch()
        entries = list(params)
        if not entries:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if all(isinstance(e, Mapping) for e in entries):
            for group in entries:
                self.add_param_group(group)
        elif any(isinstance(e, Mapping) for e in entries):
            raise ValueError("params must be all parameters / (name, parameter) pairs, or all "
                             "group dicts, not a mix")
        else:
            self.add_param_group({"params": entries})

    # -- groups ---------------------------------------------------------------------------------

    def add_param_group(self, group: Mapping[str, Any]) -> None:
        """Add a group dict: ``params`` plus any hyperparameter and ``sage`` (defaults fill in)."""
        cls = type(self).__name__
        if "params" not in group:
            raise ValueError(f"{cls}: a param group needs a 'params' entry")
        for key in group:
            if key not in _GROUP_KEYS and key not in self._hp_names:
                raise ValueError(f"{cls}: unknown key {key!r} in a param group; allowed: "
                                 f"{', '.join((*_GROUP_KEYS[:1], 'sage', *self._hp_names))}")
        raw = group["params"]
        entries = [raw] if _is_named(raw) or hasattr(raw, "data") else list(raw)
        params, names = [], []
        given_names = group.get("names")
        for j, entry in enumerate(entries):
            if _is_named(entry):
                name, p = entry
            else:
                p = entry
                name = (given_names[j] if given_names is not None
                        else f"#{len(self._index) + len(params)}")
            data = getattr(p, "data", None)
            if not isinstance(data, np.ndarray) or not np.issubdtype(data.dtype, np.floating):
                raise ValueError(f"{cls}: parameter {name!r} must have .data, a floating-point "
                                 f"ndarray; got {type(data).__name__}")
            if id(p) in self._index or any(p is q for q in params):
                raise ValueError(f"{cls}: parameter {name!r} appears in more than one group")
            if name in self._names or name in names:
                raise ValueError(f"{cls}: two parameters are named {name!r}")
            params.append(p)
            names.append(name)
        sage = self.sage_default
        if "params_type" in group:           # the official code's spelling: 'mask' = SAGE
            if group["params_type"] not in ("mask", "common"):
                raise ValueError(f"{cls}: params_type must be 'mask' or 'common', got "
                                 f"{group['params_type']!r}")
            sage = group["params_type"] == "mask"
        if "sage" in group:
            if not isinstance(group["sage"], (bool, np.bool_)):
                raise ValueError(f"{cls}: a group's 'sage' must be True or False, got "
                                 f"{group['sage']!r}")
            sage = bool(group["sage"])
        if sage and self.sage_preset is None:
            raise ValueError(f"{cls} has no SAGE variant; use AdamWSAGE, AdamaxSAGE or AdamSAGE "
                             "for groups with sage=True")
        new = {"params": params, "names": names, "sage": sage}
        for key in self._hp_names:
            new[key] = group.get(key, self.defaults[key])
        self._make_rule(new)                 # validates the hyperparameters now
        gi = len(self.param_groups)
        for p, name in zip(params, names):
            self._index[id(p)] = len(self._index)
            self._names.add(name)
        self.param_groups.append(new)
        self._rules.pop(gi, None)

    def _preset(self, group: Mapping[str, Any]) -> str:
        return self.sage_preset if group["sage"] else self.plain_preset  # type: ignore[return-value]

    def _make_rule(self, group: Mapping[str, Any]) -> spec.Rule:
        preset = self._preset(group)
        accepted = spec.defaults(preset)
        hp = {k: group[k] for k in self._hp_names
              if k in accepted and group[k] is not spec.REQUIRED}
        return spec.make(preset, **hp)

    def _rule(self, gi: int) -> spec.Rule:
        """The group's rule, remade only when its hyperparameters (e.g. ``lr``) changed."""
        group = self.param_groups[gi]
        key = (group["sage"], *(_freeze(group[k]) for k in self._hp_names))
        cached = self._rules.get(gi)
        if cached is None or cached[0] != key:
            cached = (key, self._make_rule(group))
            self._rules[gi] = cached
        return cached[1]

    # -- the step -------------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None, *, lr: float | None = None,
             lr_factor: float | None = None) -> Any:
        """Update every parameter that has a gradient; returns ``closure()`` if given.

        The lr of this step (the spec's scheduled ``lr`` argument), for every group:

        - neither given: ``group["lr"]`` (or the rule's internal schedule when ``t_total`` is set);
        - ``lr``: this value for every group;
        - ``lr_factor``: ``group["lr"] * lr_factor`` (a schedule multiplier; groups keep their
          ratio).

        With ``lr``/``lr_factor`` each group's base lr stays ``group["lr"]``; it matters for the
        official AdamW pair, whose decay uses the unscheduled base lr.

        All-or-nothing: every gradient and state is checked (``rule.prepare``) before anything is
        written; if any gradient is non-finite or mismatched, the error (naming the parameter)
        leaves all parameters and state untouched.

        With ``record``, ``last_trace[name]`` is the trace ``rule.step`` would return.
        """
        if lr is not None and lr_factor is not None:
            raise ValueError(f"{type(self).__name__}.step: give lr or lr_factor, not both")
        loss = closure() if closure is not None else None
        checked: list[tuple[int, str, spec.Rule, Prepared]] = []
        for gi, group in enumerate(self.param_groups):
            rule = self._rule(gi)
            lr_t = lr if lr_factor is None else group["lr"] * float(lr_factor)
            ready = [(self._index[id(p)], name, p) for p, name in zip(group["params"],
                                                                    group["names"])
                     if p.grad is not None]
            preps = rule.prepare_many(
                [p.data for _, _, p in ready], [p.grad for _, _, p in ready],
                [self.state[idx] if idx in self.state else rule.init(p.data)
                 for idx, _, p in ready],
                lr_t, names=[name for _, name, _ in ready], scratch=self._scratch)
            checked.extend((idx, name, rule, prep) for (idx, name, _), prep in zip(ready, preps))
        # every step is checked: from here on, write
        traces: dict[str, dict[str, np.ndarray]] | None = {} if self.record else None
        batches: dict[tuple, list[tuple[str, spec.Rule, Prepared]]] = {}
        for _, name, rule, prep in checked:
            key = (id(rule), prep.lr, prep.t, prep.param.dtype)
            batches.setdefault(key if prep.param.size <= SMALL else (name,), []).append(
                (name, rule, prep))
        for batch in batches.values():
            if len(batch) == 1:
                self._update_one(*batch[0], traces)
            else:
                self._update_batch(batch, traces)
        for idx, _, _, prep in checked:
            prep.state["step"] = prep.t
            self.state[idx] = prep.state
        # traces in parameter order
        self.last_trace = None if traces is None else {name: traces[name]
                                                       for _, name, _, _ in checked}
        return loss

    def _update_one(self, name: str, rule: spec.Rule, prep: Prepared,
                    traces: dict | None) -> None:
        """One parameter, in place: its arrays as flat views, updated block by block."""
        p, keys = prep.param, rule.array_keys
        if not (p.flags.c_contiguous and all(prep.state[k].flags.c_contiguous for k in keys)):
            # another memory order (rare): the whole tensor as one block
            g = prep.clipped_grad(out=self._scratch.get(0, prep.grad))
            old = np.array(p, copy=True) if traces is not None else None
            trace = {} if traces is not None else None
            rule.update_into(p, g, prep.state, prep.t, prep.lr, self._scratch, trace)
            if traces is not None:
                traces[name] = _finish_trace(trace, prep.lr, p, old)
            return
        flat_state = {k: prep.state[k].reshape(-1) for k in keys}
        trace = self._update_flat(rule, p.reshape(-1), prep.grad.reshape(-1), flat_state,
                                  prep, prep.clip, traces is not None)
        if traces is not None:
            traces[name] = {k: v if k == "lr" else v.reshape(p.shape) for k, v in trace.items()}

    def _update_batch(self, batch: list[tuple[str, spec.Rule, Prepared]],
                      traces: dict | None) -> None:
        """Small parameters sharing a rule, an lr and a step count: concatenated into flat arrays,
        updated together, copied back (elementwise, so the numbers are those of one call per
        parameter)."""
        _, rule, first = batch[0]
        preps = [prep for _, _, prep in batch]
        bounds = np.cumsum([0] + [prep.param.size for prep in preps]).tolist()
        total, dtype = bounds[-1], first.param.dtype

        def gather(i: int, arrays) -> np.ndarray:
            return np.concatenate([a.reshape(-1) for a in arrays],
                                  out=self._flat.take(i, (total,), dtype, total))

        flat_p = gather(0, [prep.param for prep in preps])
        flat_g = gather(1, [prep.grad for prep in preps])
        for prep, a, b in zip(preps, bounds, bounds[1:]):
            if prep.clip is not None:
                # g = g * c   (per tensor)
                flat_g[a:b] *= prep.clip
        keys = rule.array_keys
        flat_state = {k: gather(2 + i, [prep.state[k] for prep in preps])
                      for i, k in enumerate(keys)}
        flat_trace = self._update_flat(rule, flat_p, flat_g, flat_state, first, None,
                                       traces is not None)
        for prep, a, b in zip(preps, bounds, bounds[1:]):
            shape = prep.param.shape
            prep.param[...] = flat_p[a:b].reshape(shape)
            for k in keys:
                prep.state[k][...] = flat_state[k][a:b].reshape(shape)
        if traces is not None:
            for (name, _, prep), a, b in zip(batch, bounds, bounds[1:]):
                traces[name] = {k: v if k == "lr" else v[a:b].reshape(prep.param.shape)
                                for k, v in flat_trace.items()}

    def _update_flat(self, rule: spec.Rule, p: np.ndarray, g: np.ndarray,
                     state: dict[str, np.ndarray], prep: Prepared, clip: Any,
                     record: bool) -> dict | None:
        """The kernel over flat arrays (``p`` and ``state`` written in place), one block of
        ``BLOCK_BYTES`` per array at a time: every line of the update runs on a block while it is
        in the cache, then the next block. Elementwise, so the numbers are those of one call over
        the whole arrays, bit for bit. Returns the trace (flat) when ``record``."""
        size = max(1, BLOCK_BYTES // p.itemsize)
        old = np.array(p, copy=True) if record else None
        pieces: list[dict] = []
        for a in range(0, max(p.size, 1), size):  # an empty tensor: one empty block
            b = a + size
            g_block = g[a:b]
            if clip is not None:
                # g = g * c   (per tensor)
                g_block = np.multiply(g_block, clip, out=self._scratch.get(0, g_block))
            trace = {} if record else None
            rule.update_into(p[a:b], g_block, {k: s[a:b] for k, s in state.items()}, prep.t,
                             prep.lr, self._scratch, trace)
            if record:
                pieces.append(trace)
        if not record:
            return None
        trace = {k: np.concatenate([piece[k] for piece in pieces]) for k in pieces[0]}
        return _finish_trace(trace, prep.lr, p, old)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients: set them to None (default, as torch) or fill them with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    # -- inspection and checkpoints -------------------------------------------------------------

    def named_parameters(self) -> list[tuple[str, Any]]:
        """``(name, parameter)`` for every parameter, in index order."""
        return [(n, p) for g in self.param_groups for n, p in zip(g["names"], g["params"])]

    def state_of(self, param: Any) -> dict[str, Any] | None:
        """The state of ``param`` (None before its first step)."""
        return self.state.get(self._index[id(param)])

    def state_dict(self) -> dict[str, Any]:
        """A deep copy: ``{"state": {index: state}, "param_groups": [{..., "params": [idx]}]}``."""
        groups = []
        for group in self.param_groups:
            g = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            g["params"] = [self._index[id(p)] for p in group["params"]]
            groups.append(g)
        state = {idx: {k: (int(v) if k == "step" else np.array(v, copy=True))
                       for k, v in st.items()}
                 for idx, st in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyperparameters and state from :meth:`state_dict` (exactly; checked first)."""
        cls = type(self).__name__
        groups = state_dict.get("param_groups")
        saved_state = state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(saved_state, Mapping):
            raise ValueError(f"{cls}.load_state_dict: expected 'state' and 'param_groups'")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{cls}.load_state_dict: {len(groups)} param groups saved, this "
                             f"optimizer has {len(self.param_groups)}")
        new_groups = []
        params_by_index: dict[int, tuple[Any, dict[str, Any]]] = {}
        for gi, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if len(saved.get("params", ())) != len(mine["params"]):
                raise ValueError(f"{cls}.load_state_dict: group {gi} has "
                                 f"{len(saved.get('params', ()))} parameters saved, "
                                 f"{len(mine['params'])} here")
            new = dict(mine)
            for key in (*self._hp_names, "sage"):
                if key in saved:
                    new[key] = _freeze(copy.deepcopy(saved[key]))
            self._make_rule(new)
            new_groups.append(new)
            for j, p in enumerate(mine["params"]):
                params_by_index[int(saved["params"][j])] = (p, new)
        new_state: dict[int, dict[str, Any]] = {}
        for key, st in saved_state.items():
            idx = int(key)
            if idx not in params_by_index:
                raise ValueError(f"{cls}.load_state_dict: state for unknown parameter index "
                                 f"{key!r}")
            p, group = params_by_index[idx]
            rule = self._make_rule(group)
            expected = {"step", *rule.array_keys}
            if set(st) != expected:
                raise ValueError(f"{cls}.load_state_dict: state of parameter {idx} has keys "
                                 f"{sorted(st)}, expected {sorted(expected)}")
            restored: dict[str, Any] = {"step": int(st["step"])}
            for k in rule.array_keys:
                a = np.asarray(st[k])
                if a.shape != p.data.shape:
                    raise ValueError(f"{cls}.load_state_dict: state[{k!r}] of parameter {idx} "
                                     f"has shape {a.shape}, the parameter {p.data.shape}")
                restored[k] = a.astype(p.data.dtype, copy=True)
            new_state[self._index[id(p)]] = restored
        self.param_groups = new_groups
        self.state = new_state
        self._rules.clear()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for gi, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={g[k]!r}" for k in self._hp_names)
            lines.append(f"  group {gi}: {len(g['params'])} params, sage={g['sage']}, {hp}")
        return "\n".join(lines) + "\n)"


def _finish_trace(trace: dict, lr: float, new: np.ndarray, old: np.ndarray) -> dict:
    """The kernel's trace plus ``lr`` and ``update`` (new - old), as ``rule.step`` returns it."""
    trace["lr"] = np.asarray(lr)
    # update = new param - old param
    trace["update"] = np.asarray(new - old)
    return trace


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
