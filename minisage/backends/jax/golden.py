"""The jax backend's step functions for the golden vectors (``minisage crosscheck``).

Each has :func:`minisage.testing.check_rule`'s signature and runs one eager (un-jitted) step of a
transformation of :mod:`minisage.backends.jax.optimizers` on a golden case's inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from minisage.backends.jax.devices import resolve_device
from minisage.backends.jax.hparams import compute_dtype
from minisage.backends.jax.optimizers import (
    AdamSAGEState,
    BertAdamaxState,
    BertAdamWState,
    adam_sage,
    adamax_sage,
    adamw_sage,
)

_STATE_TYPES = {"adamw-sage": BertAdamWState, "bert-adamw": BertAdamWState,
                "adamax-sage": BertAdamaxState, "bert-adamax": BertAdamaxState,
                "adam-sage": AdamSAGEState, "adamw": AdamSAGEState}


def _golden_step(factory, preset: str, sage: bool, device):
    """A step function: one eager (un-jitted) step of ``factory`` on the golden inputs.

    The golden ``lr`` of a step (the scheduled lr) is given as a constant ``lr_schedule`` (the
    base ``lr`` stays the decay's); the spec preset ``adamw``'s ``maximize`` is emulated by
    negating the gradient (exact). Parameters may be float64, float32 or bfloat16 (NumPy's
    ``ml_dtypes.bfloat16``); the state is taken and returned in the compute dtype (float32 for
    bfloat16). Everything runs on ``device`` (the step count and the scalars included).
    """
    state_type = _STATE_TYPES[preset]

    def put(a):
        return jax.device_put(jnp.asarray(np.array(a)), device)

    def step_fn(param, grad, state, lr, hparams):
        with jax.default_device(device):
            return step_on_device(param, grad, state, lr, hparams)

    def step_on_device(param, grad, state, lr, hparams):
        hp = dict(hparams)
        if hp.pop("maximize", False):
            grad = -grad
        if lr is not None:
            hp["lr_schedule"] = lambda count, _lr=lr: _lr
        tx = factory(sage=sage, **hp)
        p = put(param)
        cdt = compute_dtype(p.dtype)
        st = state_type(step=jnp.asarray(state["step"], jnp.int32),
                        **{k: (put(state[k]).astype(cdt) if k in state else None)
                           for k in state_type._fields if k != "step"})
        updates, new_state = tx.update(put(grad), st, p)
        new_p = optax.apply_updates(p, updates)
        out = {k: np.asarray(v) for k, v in new_state._asdict().items()
               if v is not None and k != "step"}
        out["step"] = int(new_state.step)
        return np.asarray(new_p), out

    return step_fn


def golden_step_functions(device: str | None = None) -> list[tuple[str, str, Callable]]:
    """``(implementation, preset, step_fn)`` for every spec preset this backend implements.

    Turns on ``jax_enable_x64`` (needed for the float64 cases; float32 arrays stay float32).
    """
    jax.config.update("jax_enable_x64", True)
    dev = resolve_device(device)
    return [
        ("adamw_sage(sage=False)", "bert-adamw", _golden_step(adamw_sage, "bert-adamw", False,
                                                              dev)),
        ("adamw_sage", "adamw-sage", _golden_step(adamw_sage, "adamw-sage", True, dev)),
        ("adamax_sage(sage=False)", "bert-adamax", _golden_step(adamax_sage, "bert-adamax",
                                                                False, dev)),
        ("adamax_sage", "adamax-sage", _golden_step(adamax_sage, "adamax-sage", True, dev)),
        ("adam_sage(sage=False)", "adamw", _golden_step(adam_sage, "adamw", False, dev)),
        ("adam_sage", "adam-sage", _golden_step(adam_sage, "adam-sage", True, dev)),
    ]
