"""The torch backend's step functions for the golden vectors (``minisage crosscheck``).

Each has :func:`minisage.testing.check_rule`'s signature and runs one step of a torch optimizer on
a golden case's inputs: this package's optimizers, and ``torch.optim``'s own SGD, Adam, AdamW and
Adamax, which the spec's torch presets reproduce. With ``param_dtype="bfloat16"`` (or
``"float16"``) the parameter and the gradient are rounded to that dtype before the step and the
results come back as float32 arrays (:func:`minisage.testing.check_case_half` checks them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from minisage.backends.torch.devices import resolve_device, resolve_dtype
from minisage.backends.torch.optimizers import AdamaxSAGE, AdamSAGE, AdamWSAGE, SpecOptimizer


def _to_tensor(a: np.ndarray, device: torch.device, dtype: torch.dtype | None = None
               ) -> torch.Tensor:
    """``a`` on ``device``, in its own dtype (float32 / float64) or rounded to ``dtype``."""
    t = torch.from_numpy(np.array(a)).to(device)
    return t if dtype is None else t.to(dtype)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array; a half-precision one widened (exactly) to float32."""
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.detach().cpu().numpy()


def _spec_optimizer_step(cls: type[SpecOptimizer], sage: bool, device: torch.device,
                         param_dtype: torch.dtype | None, options: dict[str, Any]):
    """A step function running one step of ``cls`` (with ``sage`` and ``options``, e.g.
    ``foreach``) on the golden inputs.

    The scheduled ``lr`` of a golden step is set as a torch scheduler would: ``group["lr"] = lr``
    with the base lr in ``group["initial_lr"]``. The spec preset ``adamw`` has ``maximize``,
    which ``AdamSAGE(sage=False)`` lacks: it is emulated by negating the gradient (exact).
    """

    def step_fn(param, grad, state, lr, hparams):
        hp = dict(hparams)
        if hp.pop("maximize", False):
            grad = -grad
        p = _to_tensor(param, device, param_dtype)
        p.grad = _to_tensor(grad, device, param_dtype)
        opt = cls([p], sage=sage, **hp, **options)
        opt.state[p] = {k: (torch.tensor(float(v)) if k == "step" else
                            _to_tensor(v, device, opt.state_dtype(p)))
                        for k, v in state.items()}
        if lr is not None:
            opt.param_groups[0]["initial_lr"] = hp["lr"]
            opt.param_groups[0]["lr"] = lr
        opt.step()
        out = {k: (int(v) if k == "step" else _to_numpy(v)) for k, v in opt.state[p].items()}
        return _to_numpy(p), out

    return step_fn


def _torch_optim_step(preset: str, device: torch.device, param_dtype: torch.dtype | None):
    """A step function for ``torch.optim``'s own SGD, Adam, AdamW, Adamax (single-tensor path),
    which the spec presets ``sgd``, ``adam``, ``adamw``, ``adamax`` reproduce. Their state has
    the parameter's dtype (so half precision rounds the state too)."""
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "adamax": torch.optim.Adamax}[preset]

    def step_fn(param, grad, state, lr, hparams):
        hp = dict(hparams)
        if lr is not None:
            hp["lr"] = lr
        p = _to_tensor(param, device, param_dtype)
        p.grad = _to_tensor(grad, device, param_dtype)
        opt = cls([p], foreach=False, **hp)
        t = int(state["step"])
        if preset == "sgd":
            if "momentum_buffer" in state:
                opt.state[p] = {"momentum_buffer": (None if t == 0 else _to_tensor(
                    state["momentum_buffer"], device, param_dtype))}
        else:
            st = {k: _to_tensor(v, device, param_dtype) for k, v in state.items() if k != "step"}
            st["step"] = torch.tensor(float(t), dtype=torch.float32)
            opt.state[p] = st
        opt.step()
        out: dict[str, Any] = {"step": t + 1}
        for k, v in opt.state[p].items():
            if k != "step":
                out[k] = _to_numpy(v)
        return _to_numpy(p), out

    return step_fn


def golden_step_functions(device: str | torch.device | None = None, *,
                          param_dtype: str | None = None, foreach: bool | None = None
                          ) -> list[tuple[str, str, Callable]]:
    """``(implementation, preset, step_fn)`` for every spec preset this backend implements.

    ``step_fn`` has :func:`minisage.testing.check_rule`'s signature; it runs on ``device`` (CPU
    by default) in the golden case's dtype, or with parameters of ``param_dtype``
    (``"bfloat16"``, ``"float16"``: for float32 cases; the results come back as float32).
    ``foreach`` is passed to this package's optimizers (None: their default).
    """
    dev = resolve_device(device)
    half = None if param_dtype is None else resolve_dtype(param_dtype, half=True)
    options = {} if foreach is None else {"foreach": foreach}

    def ours(cls, sage):
        return _spec_optimizer_step(cls, sage, dev, half, options)

    return [
        ("torch.optim.SGD", "sgd", _torch_optim_step("sgd", dev, half)),
        ("torch.optim.Adam", "adam", _torch_optim_step("adam", dev, half)),
        ("torch.optim.AdamW", "adamw", _torch_optim_step("adamw", dev, half)),
        ("torch.optim.Adamax", "adamax", _torch_optim_step("adamax", dev, half)),
        ("AdamWSAGE(sage=False)", "bert-adamw", ours(AdamWSAGE, False)),
        ("AdamWSAGE", "adamw-sage", ours(AdamWSAGE, True)),
        ("AdamaxSAGE(sage=False)", "bert-adamax", ours(AdamaxSAGE, False)),
        ("AdamaxSAGE", "adamax-sage", ours(AdamaxSAGE, True)),
        ("AdamSAGE(sage=False)", "adamw", ours(AdamSAGE, False)),
        ("AdamSAGE", "adam-sage", ours(AdamSAGE, True)),
    ]
