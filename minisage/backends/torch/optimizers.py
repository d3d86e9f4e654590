"""SAGE as ``torch.optim.Optimizer`` subclasses, defined by the spec (:mod:`minisage.spec`).

Each optimizer implements two spec presets, chosen per param group by ``group["sage"]``; the
update equations are the spec rule's (``help(minisage.spec.rule_class(preset))``, docs/spec.md
sections 3 and 4). Each kernel below follows its rule's ``update_into`` line by line (the
equation stands above the line), on lists of tensors with ``torch._foreach_*`` operations, so
one Python call updates every parameter of a group. Results agree with the spec to rounding:
``minisage crosscheck --backend torch`` checks every golden case, the tests also cases drawn by
hypothesis (:func:`minisage.testing.check_random`). What is specific to torch:

- speed: the multi-tensor path (``foreach=True``, the default) uses fused ``lerp_``,
  ``addcmul_`` and ``addcdiv_`` where the spec writes two operations (a different rounding, not
  a different value). On the CPU it runs on pieces of at most ``BLOCK`` elements, so that the
  temporaries stay in the cache; ``foreach=False`` runs the same kernel one parameter at a time
  (bit for bit the same numbers). On a GPU a chunk's temporaries are allocated whole (three per
  SAGE parameter at most). :mod:`minisage.backends.torch.timing` measures the step against
  ``torch.optim.AdamW``;
- half precision: for float16 and bfloat16 parameters every statistic (the moments and SAGE's
  ``I``, ``Ibar``, ``U``, ``r``) is computed and kept in float32, and only the new parameter is
  rounded back. float16 cannot hold SAGE's ``eps**2`` (1e-12 rounds to 0), its sensitivities
  underflow, and ``g * g`` in a float16 second moment vanishes below ``|g| = 2.4e-4``;
- the non-finite gradient check: one reduction per tensor (the norm the clipping rules need
  anyway, else the largest ``|g|``) and one device sync per step; a NaN or infinity raises
  FloatingPointError naming the parameter before anything changes. ``check_finite=False`` skips
  it (no sync; what ``torch.compile(fullgraph=True)`` needs);
- schedules: a ``torch.optim.lr_scheduler`` changes ``group["lr"]``, which is the step's ``lr_t``;
  the AdamW pair's decoupled decay uses the *unscheduled* base lr, ``group["initial_lr"]`` once a
  scheduler is attached (torch stores it there), else ``group["lr"]``. The official in-optimizer
  schedule (``warmup``, ``t_total``, ``schedule``) multiplies whatever ``group["lr"]`` holds: use
  one schedule or the other;
- state per parameter: ``step`` (a 0-d tensor, as in ``torch.optim``, so that a compiled step
  is not specialised on it), ``exp_avg``, ``exp_avg_sq`` or ``exp_inf``, and ``sensitivity_ema``
  where SAGE is on -- the spec's names, so a torch state converts to a spec state key by key;
- ``torch.compile``: the step compiles without recompiling from step to step; the finite check
  is the one graph break (``check_finite=False`` removes it). Changing a float ``lr`` (a
  scheduler) recompiles, as for ``torch.optim``; the official in-optimizer schedule reads the step
  count on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import nn

from minisage import spec
from minisage.spec import split
from minisage.spec.schedules import official_lr
from minisage.spec.split import DEFAULT_NO_DECAY_PATTERNS, SAGE_PATTERNS

#: parameter dtypes whose statistics are computed and kept in float32
HALF = (torch.float16, torch.bfloat16)
#: the temporary slot of the clipped gradient (the kernels use slots 0, 1, 2)
CLIPPED = 3
#: elements per piece on the CPU: about 1 MiB per array at float32, so that a piece's arrays and
#: temporaries (about nine) stay in the cache from one operation to the next. Measured on the
#: 10M-parameter model of minisage.backends.torch.timing (one thread): about 40% less time than
#: whole tensors; 16K elements pay Python's dispatch instead, 1M elements leave the cache.
BLOCK = 1 << 18


# -- param groups -------------------------------------------------------------------------------

def sage_param_groups(named_parameters: Iterable[tuple[str, Any]], *,
                      sage_patterns: str | Sequence[str] = SAGE_PATTERNS,
                      no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS,
                      weight_decay: float = 0.01, on_no_sage: str = "warn",
                      **hparams: Any) -> list[dict[str, Any]]:
    """The SAGE split (:func:`minisage.spec.split.sage_param_groups`) of a torch model's
    ``named_parameters()``, leaving out parameters with ``requires_grad=False``; torch keeps the
    names in ``group["param_names"]``.

    ``sage_patterns``: substrings of the names that get SAGE, or the name of a pattern set
    (``"bert"`` -- the official one, the default --, ``"distilbert"``, ``"gpt2"``, ``"vit"``,
    ``"llama"``, ``"all"``; :data:`minisage.spec.split.SAGE_PATTERN_SETS`). When they select no
    parameter, ``on_no_sage`` decides: ``"warn"`` (default), ``"raise"`` or ``"ignore"``; or
    select by structure with :func:`structural_param_groups`.
    """
    return split.sage_param_groups(named_parameters, sage_patterns=sage_patterns,
                                   no_decay_patterns=no_decay_patterns, weight_decay=weight_decay,
                                   include=_trainable, on_no_sage=on_no_sage, **hparams)


def _trainable(p) -> bool:
    return getattr(p, "requires_grad", True)


#: module types whose parameters never decay (besides every bias); a class whose name contains
#: "Norm" counts too (transformers' LlamaRMSNorm, T5LayerNorm, ...)
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)


def block_linear_names(model: nn.Module) -> list[str]:
    """The names of the parameters of the linear layers inside the model's repeated blocks.

    A block is an element of an ``nn.ModuleList`` (BERT's ``encoder.layer``, GPT-2's ``h``,
    LLaMA's ``layers``, minisage's ``blocks``); a linear layer is an ``nn.Linear`` (or a
    subclass) or a module named ``Conv1D`` (GPT-2's transposed linear layer). Found by type, so
    the parameter names do not matter: the attention projections and the feed-forward layers
    of any Transformer, weights and biases, as the official split selects them in BERT. Layers
    outside the blocks (embeddings, pooler, heads) are not selected.
    """
    names: list[str] = []
    for list_name, container in model.named_modules():
        if not isinstance(container, nn.ModuleList):
            continue
        for i, block in enumerate(container):
            for sub_name, module in block.named_modules():
                if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
                    prefix = ".".join(s for s in (list_name, str(i), sub_name) if s)
                    names += [f"{prefix}.{n}" for n, _ in module.named_parameters(recurse=False)]
    return list(dict.fromkeys(names))  # nested lists meet the same layer once


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases and the parameters of normalization layers (by type, see NORM_TYPES)."""
    out = set()
    for mod_name, module in model.named_modules():
        norm = isinstance(module, NORM_TYPES) or "Norm" in type(module).__name__
        for n, _ in module.named_parameters(recurse=False):
            if norm or n == "bias":
                out.add(f"{mod_name}.{n}" if mod_name else n)
    return out


def structural_param_groups(model: nn.Module, *, weight_decay: float = 0.01,
                            on_no_sage: str = "warn", **hparams: Any) -> list[dict[str, Any]]:
    """Param groups that select by structure instead of by name: SAGE on the linear layers
    inside the repeated blocks (:func:`block_linear_names`), weight decay on everything but
    biases and normalization layers (found by type). On BERT, RoBERTa and minisage's
    Transformer it is exactly the official split; it also fits DistilBERT, GPT-2, ViT, LLaMA and
    models whose names no pattern set knows. Same groups and ``on_no_sage`` as
    :func:`sage_param_groups`.
    """
    sage = set(block_linear_names(model))
    no_decay = _no_decay_names(model)
    return split.sage_param_groups(
        model.named_parameters(), weight_decay=weight_decay, include=_trainable,
        sage_select=sage.__contains__, no_decay_select=no_decay.__contains__,
        on_no_sage=on_no_sage, **hparams)


# -- helpers of the kernels: numbers that are floats in eager mode, 0-d tensors when compiling ----

def _sqrt(x):
    """``sqrt`` of a Python float (exactly as the spec) or of a 0-d tensor (compiled step)."""
    return math.sqrt(x) if isinstance(x, float) else torch.sqrt(x)


def _add_product(op, P: list, A: list, B: list, factors: list) -> None:  # noqa: N803
    """``p = p + factor * op(a, b)`` for each tensor, ``op`` being ``torch._foreach_addcdiv_``
    (``a / b``) or ``torch._foreach_addcmul_`` (``a * b``), with per-tensor factors: floats (one
    fused pass), or 0-d tensors when compiling (they scale a copy of ``a`` first)."""
    if all(isinstance(f, (int, float)) for f in factors):
        op(P, A, B, [float(f) for f in factors])
    else:
        op(P, torch._foreach_mul(A, factors), B)


def _neg(values: list) -> list:
    return [-v for v in values]


def _into(fn, outs: list, *args: list) -> list:
    """``outs[i] = fn(args[0][i], args[1][i], ...)`` with ``out=``: a new value without a new
    tensor (an element of ``args`` may be a list of per-tensor numbers)."""
    for out, *a in zip(outs, *args):
        fn(*a, out=out)
    return outs


def _sage_multiplier(P, G, B, beta3: float, eps: float, bias_correction3: list | None,  # noqa: N803
                     I: list, H: list) -> list:  # noqa: E741, N803
    """SAGE's multiplier ``r`` of each tensor, from the pieces of :mod:`minisage.spec.sage`,
    written into ``I``; ``B`` (the states' ``sensitivity_ema``) is updated in place; ``H`` is a
    temporary. ``bias_correction3``: ``1 - beta3^t`` of each tensor where the rule bias-corrects,
    else None.
    """
    # I = |p * g|
    _into(torch.mul, I, P, G)
    torch._foreach_abs_(I)
    # Ibar = beta3 * Ibar + (1 - beta3) * I      (lerp: the same value in one pass)
    torch._foreach_lerp_(B, I, 1 - beta3)
    # Ihat = Ibar / (1 - beta3^t) where bias-corrected, else Ihat = Ibar
    Ihat = _into(torch.div, H, B, bias_correction3) if bias_correction3 else B  # noqa: N806
    # U = |I - Ihat|                             (into I)
    torch._foreach_sub_(I, Ihat)
    torch._foreach_abs_(I)
    # r = U / (Ihat + eps)                       (into I)
    _into(torch.add, H, Ihat, [eps] * len(H))
    torch._foreach_div_(I, H)
    return I


class _Piece:
    """The part of a chunk one kernel call updates: ``items`` are ``(i, start, stop)``, a range
    of the flattened tensor ``i``, or ``(i, None, None)``, the tensor ``i`` as it is.

    Temporaries: ``tmp(k)`` is the k-th list (one per item, shaped like ``like``'s views). With a
    ``store`` (a dict the optimizer keeps) they are views of one flat buffer per slot, reused by
    every piece and every step; without, fresh tensors."""

    def __init__(self, items: list[tuple], store: dict | None, like: list) -> None:
        self.items, self.store = items, store
        self.like = self.view(like)

    def view(self, tensors: list) -> list:
        return [tensors[i] if a is None else tensors[i].view(-1)[a:b] for i, a, b in self.items]

    def tmp(self, k: int) -> list:
        if self.store is None:
            return [torch.empty_like(t) for t in self.like]
        t0 = self.like[0]
        total = sum(t.numel() for t in self.like)
        key = (k, t0.dtype, t0.device)
        buf = self.store.get(key)
        if buf is None or buf.numel() < total:
            buf = self.store[key] = torch.empty(total, dtype=t0.dtype, device=t0.device)
        out, start = [], 0
        for t in self.like:
            out.append(buf[start:start + t.numel()].view(t.shape))
            start += t.numel()
        return out


# -- the optimizers -----------------------------------------------------------------------------

class SpecOptimizer(torch.optim.Optimizer):
    """Shared machinery: hyperparameters checked by the spec rule, the per-group ``sage``
    switch, the finite check, float32 statistics for half parameters, the per-step buckets."""

    #: (preset with sage, preset without)
    presets: tuple[str, str] = ("", "")
    #: the state's moment tensors (``sensitivity_ema`` comes in where SAGE is on)
    moments: tuple[str, ...] = ()

    def __init__(self, params, sage: bool = True, *, foreach: bool | None = None,
                 fused: bool | None = None, check_finite: bool = True,
                 **hparams: Any) -> None:
        if fused:
            raise ValueError(f"{type(self).__name__} has no fused kernel; the multi-tensor path "
                             "(foreach=True, the default) is its fast path")
        rule = spec.make(self.presets[0], **hparams)  # checks names and ranges; fills defaults
        self.foreach = True if foreach is None else bool(foreach)
        self.check_finite = bool(check_finite)
        defaults = {**rule.hparams, "sage": sage}
        super().__init__(params, defaults)

    def __getstate__(self) -> dict[str, Any]:
        # torch pickles defaults, state and param_groups only; the options come along (the
        # buffers kept between steps do not)
        return {**super().__getstate__(), "foreach": self.foreach,
                "check_finite": self.check_finite}

    # -- groups ----------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, with the group checked *before* it is added: a bad
        hyperparameter, ``sage`` flag or parameter raises and leaves the optimizer as it was."""
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        for p in group["params"]:
            p = p[1] if isinstance(p, tuple) else p
            if isinstance(p, torch.Tensor) and not p.is_floating_point():
                raise TypeError(f"{type(self).__name__}: parameters must be floating point, "
                                f"got dtype {p.dtype}")
        super().add_param_group(group)
        self._init_states(self.param_groups[-1])

    def _init_states(self, group) -> None:
        """Every trainable parameter's state, made now rather than at its first step: a compiled
        step then finds the same state at every call (no recompilation after the first). A frozen
        parameter (``requires_grad=False``) gets its state if it ever has a gradient."""
        for p in group["params"]:
            if p.requires_grad:
                self._state_of(p, group)

    def _check_group(self, group: dict[str, Any]) -> None:
        if not isinstance(group["sage"], (bool, np.bool_)):
            raise ValueError(f"{type(self).__name__}: sage must be True or False, "
                             f"got {group['sage']!r}")
        group["sage"] = bool(group["sage"])
        hp = {k: group[k] for k in self.defaults if k != "sage"}
        checked = spec.make(self.presets[0], **hp).hparams
        # group["lr"] may be changed later by a scheduler; the rest is normalised here
        for k, v in checked.items():
            if k != "lr":
                group[k] = v

    def preset(self, group: Mapping[str, Any]) -> str:
        """The spec preset a group follows: ``presets[0]`` with SAGE on, ``presets[1]`` without."""
        return self.presets[0] if group["sage"] else self.presets[1]

    # -- state -----------------------------------------------------------------------------------

    @staticmethod
    def state_dtype(p: torch.Tensor) -> torch.dtype:
        """The dtype of ``p``'s statistics: float32 for a half parameter, else ``p``'s own."""
        return torch.float32 if p.dtype in HALF else p.dtype

    def _state_of(self, p: torch.Tensor, group) -> dict[str, Any]:
        state = self.state[p]
        keys = self.moments + (("sensitivity_ema",) if group["sage"] else ())
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
        elif not isinstance(state["step"], torch.Tensor):  # an int, e.g. from a spec state
            state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
        for key in keys:
            if key not in state:
                state[key] = torch.zeros_like(p, dtype=self.state_dtype(p),
                                              memory_format=torch.preserve_format)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, except that the statistics of half parameters stay
        float32 (torch would round them to the parameter's dtype)."""
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for pid, p in zip(saved_ids, params):
            if p.dtype in HALF and pid in state_dict["state"]:
                for key, value in state_dict["state"][pid].items():
                    if key != "step" and isinstance(value, torch.Tensor):
                        self.state[p][key] = value.to(device=p.device, dtype=torch.float32)
        for group in self.param_groups:
            self._init_states(group)

    def _pieces(self, P: list, G: list, state: dict) -> tuple[list[list[tuple]], dict | None]:  # noqa: N803
        """How a chunk is cut into pieces (see :class:`_Piece`), and where their temporaries
        live. On the CPU (eager) every contiguous tensor is cut into ranges of at most BLOCK
        elements, packed in order into pieces of at most BLOCK elements (a piece holds one
        tensor's ranges only with ``foreach=False``); the temporaries are kept between steps in
        buffers of one piece's size. On a GPU, and when compiling, a chunk is one piece of whole
        tensors with fresh temporaries (CUDA's caching allocator reuses memory, the compiler
        fuses), and so is a chunk of tensor subclasses (FSDP2's DTensors)."""
        whole = [[(i, None, None) for i in range(len(P))]]
        plain = all(type(t) in (torch.Tensor, nn.Parameter) for t in chain(P, G))  # no DTensor
        if P[0].device.type != "cpu" or not plain or torch.compiler.is_compiling():
            return whole if self.foreach else [[item] for item in whole[0]], None
        store = self.__dict__.setdefault("_buffers", {})  # not in state_dict(), not pickled
        pieces: list[list[tuple]] = [[]]
        size = 0
        for i, p in enumerate(P):
            tensors = [p, G[i], *(v[i] for v in state.values())]
            n = p.numel()
            if all(t.is_contiguous() for t in tensors):
                ranges = [(i, a, min(a + BLOCK, n)) for a in range(0, n, BLOCK)]
            else:
                ranges = [(i, None, None)]
            if not self.foreach and pieces[-1]:
                pieces.append([])
                size = 0
            for item in ranges:
                m = n if item[1] is None else item[2] - item[1]
                if pieces[-1] and size + m > BLOCK:
                    pieces.append([])
                    size = 0
                pieces[-1].append(item)
                size += m
        return [piece for piece in pieces if piece], store

    # -- the step --------------------------------------------------------------------------------

    def _names(self, group) -> list[str]:
        names = group.get("param_names")
        if names:
            return list(names)
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        return [f"{i} of group {index}" for i in range(len(group["params"]))]

    def _gradients(self) -> list[tuple[dict, list, list, list]]:
        """``(group, params, grads, names)`` of the parameters that have a gradient."""
        out = []
        for group in self.param_groups:
            ps, gs, ns = [], [], []
            for p, name in zip(group["params"], self._names(group)):
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse "
                                           "gradients")
                    ps.append(p)
                    gs.append(p.grad)
                    ns.append(name)
            if ps:
                out.append((group, ps, gs, ns))
        return out

    def _norms(self, work) -> list[list]:
        """Per group, one norm per gradient: ``||g||_2`` (in float32 at least) where the group
        clips, else ``max |g|``. One reduction per tensor; a NaN or infinity makes it non-finite."""
        out = []
        for group, _, gs, _ in work:
            full = [g for g in gs if g.numel()]  # an empty tensor has norm 0 (and no max)
            if not full:
                norms = iter(())
            elif group.get("max_grad_norm", -1) > 0:
                norms = iter(torch._foreach_norm([g.float() if g.dtype in HALF else g
                                                  for g in full]))
            else:
                norms = iter(torch._foreach_norm(full, float("inf")))
            out.append([next(norms) if g.numel() else g.new_zeros((), dtype=torch.float32)
                        for g in gs])
        return out

    def _check_finite(self, work, norms) -> list[list[float]]:
        """The norms as floats (one device sync), after checking that every gradient is finite
        (FloatingPointError naming the first parameter that is not; nothing has changed yet)."""
        # a DTensor's norm (FSDP2) comes whole to every rank: every rank steps, in one order
        flat = [n.full_tensor() if hasattr(n, "full_tensor") else n for ns in norms for n in ns]
        if len({(n.device, n.dtype) for n in flat}) == 1:
            values = torch.stack(flat).tolist()  # one device sync
        else:
            values = [float(n) for n in flat]
        if all(math.isfinite(v) for v in values):
            it = iter(values)
            return [[next(it) for _ in ns] for ns in norms]
        # a non-finite norm: a NaN or infinity in the gradient, or the sum of squares of finite
        # entries overflowed; look at the entries of those tensors
        it = iter(values)
        for (_, _, gs, names), ns in zip(work, norms):
            for g, name, _ in zip(gs, names, ns):
                if not math.isfinite(next(it)) and not bool(torch.isfinite(g).all()):
                    raise FloatingPointError(
                        f"{type(self).__name__}: non-finite gradient for parameter {name!r}; "
                        "the parameters and the optimizer state were left unchanged")
        it = iter(values)
        return [[next(it) for _ in ns] for ns in norms]

    def _check_finite_eagerly(self, work, norms) -> None:
        """:meth:`_check_finite` outside a compiled graph (it syncs and may raise). Wrapped
        here, when compiling, not as a decorator: that would import torch's compiler (seconds)
        with this module."""
        torch.compiler.disable(self._check_finite)(work, norms)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One update of every parameter that has a gradient. Returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._gradients()
        if not work:
            return loss
        norms = self._norms(work)
        if self.check_finite:
            if torch.compiler.is_compiling():
                self._check_finite_eagerly(work, norms)  # the step's one graph break
            else:
                norms = self._check_finite(work, norms)
        for (group, ps, gs, _), group_norms in zip(work, norms):
            states = [self._state_of(p, group) for p in ps]
            chunks = self._chunks(ps, states)
            for idx in chunks:
                self._update_chunk(group, [ps[i] for i in idx], [gs[i] for i in idx],
                                   [states[i] for i in idx], [group_norms[i] for i in idx])
        return loss

    def _chunks(self, ps, states) -> list[list[int]]:
        """The indices of each (device, dtype): a chunk shares the kernel's dtype and device
        (:meth:`_pieces` cuts it further)."""
        chunks: dict[tuple, list[int]] = {}
        for i, p in enumerate(ps):
            chunks.setdefault((p.device, p.dtype), []).append(i)
        return list(chunks.values())

    def _update_chunk(self, group, ps, gs, states, norms) -> None:
        half = ps[0].dtype in HALF
        work_dtype = self.state_dtype(ps[0])
        # the kernel's inputs in the statistics' dtype (copies for half parameters)
        P = [p.float() for p in ps] if half else ps  # noqa: N806
        G = [g.to(work_dtype) if g.dtype != work_dtype else g for g in gs]  # noqa: N806
        steps = [st["step"] for st in states]
        if torch.compiler.is_compiling():
            # 0-d tensors (a compiled step is not specialised on them), in float64 as the
            # eager step's Python floats: 1 - beta2^t cancels, float32 would keep ~4 digits
            counts = [s.to(device=ps[0].device, dtype=torch.float64) for s in steps]
        else:
            counts = [int(s.item()) for s in steps]  # CPU tensors: no device sync
        clip = self._clip_factors(group, norms)
        state = {key: [st[key] for st in states] for key in states[0] if key != "step"}
        pieces, store = self._pieces(P, G, state)
        for items in pieces:
            piece = _Piece(items, store, P)
            indices = [i for i, _, _ in items]
            g = self._clipped(piece.view(G), [clip[i] for i in indices], piece)
            self._kernel(piece.view(P), g, {k: piece.view(v) for k, v in state.items()},
                         [counts[i] for i in indices], group, piece.tmp)
        if half:
            # the new parameter, rounded once to its dtype
            torch._foreach_copy_(ps, P)
        torch._foreach_add_(steps, 1.0)

    def _clip_factors(self, group, norms) -> list:
        """The spec's per-tensor clipping factor: ``c = max_grad_norm / (||g|| + 1e-6)`` where
        ``c < 1``, else None (nothing to clip); when compiling (no host sync), ``min(c, 1)`` as
        a tensor for every gradient."""
        max_norm = group.get("max_grad_norm", -1)
        if max_norm <= 0:
            return [None] * len(norms)
        if torch.compiler.is_compiling():
            # c = max_grad_norm / (||g|| + 1e-6), 1 where it is not < 1
            return [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
        # c = max_grad_norm / (||g|| + 1e-6)
        factors = [max_norm / (float(n) + 1e-6) for n in norms]
        return [c if c < 1 else None for c in factors]

    def _clipped(self, G: list, factors: list, piece: _Piece) -> list:  # noqa: N803
        """``g * c`` where a gradient clips, into a temporary (``p.grad`` is never changed)."""
        if all(c is None for c in factors):
            return G
        if any(isinstance(c, torch.Tensor) for c in factors):  # compiling
            return torch._foreach_mul(G, factors)
        room = piece.tmp(CLIPPED)
        # g = g * c
        return [g if c is None else torch.mul(g, c, out=r) for g, c, r in zip(G, factors, room)]

    def _kernel(self, P, G, state, counts, group, tmp) -> None:  # noqa: N803
        """The update of one piece, in place on ``P`` and the lists of ``state``; ``tmp(k)`` is
        the k-th list of temporaries (k = 0, 1, 2) of ``P``'s shapes and dtype."""
        raise NotImplementedError


class AdamWSAGE(SpecOptimizer):
    """The official ``UnstructAwareAdamW``: spec preset ``adamw-sage`` on groups with ``sage=True``
    (the default), ``bert-adamw`` on the others.

    The update: ``help(minisage.spec.rule_class("adamw-sage"))`` (docs/spec.md section 3).
    Arguments, with the official names and defaults: ``lr=1e-3``, ``warmup=-1``, ``t_total=-1``,
    ``schedule="warmup_linear"`` (the official in-optimizer schedule; ``t_total=-1`` turns it
    off), ``betas=(0.9, 0.999)``, ``beta3=0.75``, ``eps=1e-6``, ``weight_decay=0.0``,
    ``correct_bias=True``, ``max_grad_norm=1.0`` (<= 0: no per-tensor clipping), ``sage=True``;
    and ``foreach``, ``check_finite`` (see :mod:`minisage.backends.torch.optimizers`).

    Warning: not ``torch.optim.AdamW``: the decay follows the step and uses the base lr
    (``group["initial_lr"]`` under a torch scheduler).
    """

    presets = ("adamw-sage", "bert-adamw")
    moments = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, warmup: float = -1, t_total: int = -1,
                 schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True,
                 max_grad_norm: float = 1.0, sage: bool = True, *, foreach: bool | None = None,
                 fused: bool | None = None, check_finite: bool = True) -> None:
        super().__init__(params, sage=sage, foreach=foreach, fused=fused,
                         check_finite=check_finite, lr=lr, warmup=warmup, t_total=t_total,
                         schedule=schedule, betas=betas, beta3=beta3, eps=eps,
                         weight_decay=weight_decay, correct_bias=correct_bias,
                         max_grad_norm=max_grad_norm)

    def _kernel(self, P, G, state, counts, group, tmp):  # noqa: N803
        b1, b2 = group["betas"]
        eps = group["eps"]
        M, V = state["exp_avg"], state["exp_avg_sq"]  # noqa: N806
        # t = t + 1
        ts = [t + 1 for t in counts]
        # m = beta1 * m + (1 - beta1) * g           (lerp: the same value in one pass)
        torch._foreach_lerp_(M, G, 1 - b1)
        # v = beta2 * v + (1 - beta2) * g * g
        torch._foreach_mul_(V, b2)
        torch._foreach_addcmul_(V, G, G, 1 - b2)
        # denom = sqrt(v) + eps
        D = _into(torch.sqrt, tmp(0), V)  # noqa: N806
        torch._foreach_add_(D, eps)
        # s = lr_t, scheduled with the incremented t
        s = [official_lr(group["lr"], t, group["t_total"], group["warmup"], group["schedule"])
             for t in ts]
        if group["correct_bias"]:
            # s = s * (sqrt(1 - beta2^t) / (1 - beta1^t))
            s = [si * (_sqrt(1 - b2**t) / (1 - b1**t)) for si, t in zip(s, ts)]
        if group["sage"]:
            # r = |I - Ihat| / (Ihat + eps^2), Ihat = Ibar / (1 - beta3^t) if correct_bias
            b3 = group["beta3"]
            r = _sage_multiplier(P, G, state["sensitivity_ema"], b3, eps**2,
                                 [1 - b3**t for t in ts] if group["correct_bias"] else None,
                                 tmp(1), tmp(2))
            # p = p - (m / denom) * (s * r)           (as p - s * (r * m) / denom)
            torch._foreach_mul_(r, M)
            _add_product(torch._foreach_addcdiv_, P, r, D, _neg(s))
        else:
            # p = p - s * m / denom
            _add_product(torch._foreach_addcdiv_, P, M, D, _neg(s))
        if group["weight_decay"] > 0:
            # p = p - lr * weight_decay * p      (base lr: unscheduled by a torch scheduler)
            base_lr = group.get("initial_lr", group["lr"])
            torch._foreach_add_(P, P, alpha=-(base_lr * group["weight_decay"]))


class AdamaxSAGE(SpecOptimizer):
    """The official ``UnstructAwareAdamax``: spec preset ``adamax-sage`` on groups with
    ``sage=True`` (the default), ``bert-adamax`` on the others.

    The update: ``help(minisage.spec.rule_class("adamax-sage"))`` (docs/spec.md section 3).
    Arguments, with the official names and defaults: ``lr`` (required), ``warmup=-1``,
    ``t_total=-1``, ``schedule="warmup_linear"``, ``betas=(0.9, 0.999)``, ``beta3=0.75``,
    ``eps=1e-6``, ``weight_decay=0.01``, ``max_grad_norm=1.0``, ``sage=True``; and ``foreach``,
    ``check_finite`` (see :mod:`minisage.backends.torch.optimizers`).

    Warning: not ``torch.optim.Adamax``: no bias correction, and the decay is inside the update
    (scaled by the lr and by ``r``).
    """

    presets = ("adamax-sage", "bert-adamax")
    moments = ("exp_avg", "exp_inf")

    def __init__(self, params, lr: float, warmup: float = -1, t_total: int = -1,
                 schedule: str = "warmup_linear", betas=(0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
                 sage: bool = True, *, foreach: bool | None = None, fused: bool | None = None,
                 check_finite: bool = True) -> None:
        super().__init__(params, sage=sage, foreach=foreach, fused=fused,
                         check_finite=check_finite, lr=lr, warmup=warmup, t_total=t_total,
                         schedule=schedule, betas=betas, beta3=beta3, eps=eps,
                         weight_decay=weight_decay, max_grad_norm=max_grad_norm)

    def _kernel(self, P, G, state, counts, group, tmp):  # noqa: N803
        b1, b2 = group["betas"]
        eps = group["eps"]
        M, U = state["exp_avg"], state["exp_inf"]  # noqa: N806
        # m = beta1 * m + (1 - beta1) * g           (lerp: the same value in one pass)
        torch._foreach_lerp_(M, G, 1 - b1)
        # u = max(beta2 * u, |g| + eps)
        torch._foreach_mul_(U, b2)
        A = _into(torch.abs, tmp(0), G)  # noqa: N806
        torch._foreach_add_(A, eps)
        torch._foreach_maximum_(U, A)
        # update = m / (u + eps)                     (into A)
        _into(torch.add, A, U, [eps] * len(A))
        update = _into(torch.div, A, M, A)
        if group["sage"]:
            # r = |I - Ibar| / (Ibar + eps^2)
            r = _sage_multiplier(P, G, state["sensitivity_ema"], group["beta3"], eps**2, None,
                                 tmp(1), tmp(2))
        if group["weight_decay"] > 0:
            # update = update + weight_decay * p
            torch._foreach_add_(update, P, alpha=group["weight_decay"])
        # s = lr_t, scheduled with t before its increment
        s = [official_lr(group["lr"], t, group["t_total"], group["warmup"], group["schedule"])
             for t in counts]
        if group["sage"]:
            # p = p - (s * r) * update
            _add_product(torch._foreach_addcmul_, P, r, update, _neg(s))
        else:
            # p = p - s * update
            torch._foreach_mul_(update, s)
            torch._foreach_sub_(P, update)


class AdamSAGE(SpecOptimizer):
    """The paper's SAGE-Adam as the spec reads it: preset ``adam-sage`` on groups with
    ``sage=True`` (the default), ``torch.optim.AdamW`` (preset ``adamw``) on the others.

    The update: ``help(minisage.spec.rule_class("adam-sage"))`` (docs/spec.md section 4).
    Arguments: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``beta3=0.75``, ``eps=1e-8``,
    ``sage_eps=1e-12``, ``weight_decay=0.0``, ``sage=True``; and ``foreach``, ``check_finite``
    (see :mod:`minisage.backends.torch.optimizers`). No clipping and no internal schedule: use
    ``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.lr_scheduler``.

    Warning: a reading of the paper, not of the official code (see ``AdamWSAGE``).
    """

    presets = ("adam-sage", "adamw")
    moments = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), beta3: float = 0.75,
                 eps: float = 1e-8, sage_eps: float = 1e-12, weight_decay: float = 0.0,
                 sage: bool = True, *, foreach: bool | None = None, fused: bool | None = None,
                 check_finite: bool = True) -> None:
        super().__init__(params, sage=sage, foreach=foreach, fused=fused,
                         check_finite=check_finite, lr=lr, betas=betas, beta3=beta3, eps=eps,
                         sage_eps=sage_eps, weight_decay=weight_decay)

    def _kernel(self, P, G, state, counts, group, tmp):  # noqa: N803
        b1, b2 = group["betas"]
        wd = group["weight_decay"]
        lr_t = group["lr"]
        M, V = state["exp_avg"], state["exp_avg_sq"]  # noqa: N806
        # t = t + 1
        ts = [t + 1 for t in counts]
        if group["sage"]:
            # r = |I - Ibar| / (Ibar + sage_eps)     (I from p before this step)
            r = _sage_multiplier(P, G, state["sensitivity_ema"], group["beta3"],
                                 group["sage_eps"], None, tmp(1), tmp(2))
        if wd != 0:
            # p = p * (1 - lr_t * weight_decay)
            torch._foreach_mul_(P, 1 - lr_t * wd)
        # m = m + (1 - beta1) * (g - m)
        torch._foreach_lerp_(M, G, 1 - b1)
        # v = beta2 * v + (1 - beta2) * g * g
        torch._foreach_mul_(V, b2)
        torch._foreach_addcmul_(V, G, G, 1 - b2)
        # denom = sqrt(v) / sqrt(1 - beta2^t) + eps, kept as denom * sqrt(1 - beta2^t) =
        # sqrt(v) + eps * sqrt(1 - beta2^t) (one pass less; the factor moves to step_size)
        root2 = [_sqrt(1 - b2**t) for t in ts]
        D = _into(torch.sqrt, tmp(0), V)  # noqa: N806
        torch._foreach_add_(D, [group["eps"] * c for c in root2])
        # step_size = lr_t / (1 - beta1^t)        (times sqrt(1 - beta2^t), see denom)
        step_size = [lr_t / (1 - b1**t) * c for t, c in zip(ts, root2)]
        if group["sage"]:
            # p = p - step_size * r * m / denom
            torch._foreach_mul_(r, M)
            _add_product(torch._foreach_addcdiv_, P, r, D, _neg(step_size))
        else:
            # p = p - step_size * m / denom
            _add_product(torch._foreach_addcdiv_, P, M, D, _neg(step_size))
