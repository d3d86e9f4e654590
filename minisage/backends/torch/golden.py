"""The torch backend's step functions for the golden vectors (``minisage crosscheck``).

Each has :func:`minisage.testing.check_rule`'s signature and runs one step of a torch optimizer on
a golden case's inputs: this package's optimizers, and ``torch.optim``'s own SGD, Adam, AdamW and
Adamax, which the spec's torch presets reproduce.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from minisage.backends.torch.devices import resolve_device
from minisage.backends.torch.optimizers import AdamaxSAGE, AdamSAGE, AdamWSAGE, SpecOptimizer


def _to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(np.array(a), device=device)  # keeps float32 / float64


def _spec_optimizer_step(cls: type[SpecOptimizer], sage: bool, device: torch.device):
    """A step function running one step of ``cls`` (with ``sage``) on the golden inputs.

    The scheduled ``lr`` of a golden step is set as a torch scheduler would: ``group["lr"] = lr``
    with the base lr in ``group["initial_lr"]``. The spec preset ``adamw`` has ``maximize``,
    which ``AdamSAGE(sage=False)`` lacks: it is emulated by negating the gradient (exact).
    """

    def step_fn(param, grad, state, lr, hparams):
        hp = dict(hparams)
        if hp.pop("maximize", False):
            grad = -grad
        p = _to_tensor(param, device)
        p.grad = _to_tensor(grad, device)
        opt = cls([p], sage=sage, **hp)
        opt.state[p] = {k: (int(v) if k == "step" else _to_tensor(v, device))
                        for k, v in state.items()}
        if lr is not None:
            opt.param_groups[0]["initial_lr"] = hp["lr"]
            opt.param_groups[0]["lr"] = lr
        opt.step()
        out = {k: (int(v) if k == "step" else v.cpu().numpy()) for k, v in opt.state[p].items()}
        return p.detach().cpu().numpy(), out

    return step_fn


def _torch_optim_step(preset: str, device: torch.device):
    """A step function for ``torch.optim``'s own SGD, Adam, AdamW, Adamax (single-tensor path),
    which the spec presets ``sgd``, ``adam``, ``adamw``, ``adamax`` reproduce."""
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "adamax": torch.optim.Adamax}[preset]

    def step_fn(param, grad, state, lr, hparams):
        hp = dict(hparams)
        if lr is not None:
            hp["lr"] = lr
        p = _to_tensor(param, device)
        p.grad = _to_tensor(grad, device)
        opt = cls([p], foreach=False, **hp)
        t = int(state["step"])
        if preset == "sgd":
            if "momentum_buffer" in state:
                opt.state[p] = {"momentum_buffer": (None if t == 0 else
                                                    _to_tensor(state["momentum_buffer"], device))}
        else:
            st = {k: _to_tensor(v, device) for k, v in state.items() if k != "step"}
            st["step"] = torch.tensor(float(t), dtype=torch.float32)
            opt.state[p] = st
        opt.step()
        out: dict[str, Any] = {"step": t + 1}
        for k, v in opt.state[p].items():
            if k != "step":
                out[k] = v.cpu().numpy()
        return p.detach().cpu().numpy(), out

    return step_fn


def golden_step_functions(device: str | torch.device | None = None
                          ) -> list[tuple[str, str, Callable]]:
    """``(implementation, preset, step_fn)`` for every spec preset this backend implements.

    ``step_fn`` has :func:`minisage.testing.check_rule`'s signature; it runs on ``device``
    (CPU by default) in the golden case's dtype.
    """
    dev = resolve_device(device)
    return [
        ("torch.optim.SGD", "sgd", _torch_optim_step("sgd", dev)),
        ("torch.optim.Adam", "adam", _torch_optim_step("adam", dev)),
        ("torch.optim.AdamW", "adamw", _torch_optim_step("adamw", dev)),
        ("torch.optim.Adamax", "adamax", _torch_optim_step("adamax", dev)),
        ("AdamWSAGE(sage=False)", "bert-adamw", _spec_optimizer_step(AdamWSAGE, False, dev)),
        ("AdamWSAGE", "adamw-sage", _spec_optimizer_step(AdamWSAGE, True, dev)),
        ("AdamaxSAGE(sage=False)", "bert-adamax", _spec_optimizer_step(AdamaxSAGE, False, dev)),
        ("AdamaxSAGE", "adamax-sage", _spec_optimizer_step(AdamaxSAGE, True, dev)),
        ("AdamSAGE(sage=False)", "adamw", _spec_optimizer_step(AdamSAGE, False, dev)),
        ("AdamSAGE", "adam-sage", _spec_optimizer_step(AdamSAGE, True, dev)),
    ]
