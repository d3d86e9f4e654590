"""The jax backend's step functions for the golden vectors (``minisage crosscheck``).

Each has :func:`minisage.testing.check_rule`'s signature and runs one eager (un-jitted) step of a
transformation of :mod:`minisage.backends.jax.optimizers` on a golden case's inputs. With
``param_dtype="bfloat16"`` (or ``"float16"``) the parameter and the gradient are rounded to that
dtype before the step and the results come back as float32 arrays
(:func:`minisage.testing.check_case_half` checks them).
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


HALF_DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _golden_step(factory, preset: str, sage: bool, device, param_dtype=None):
    """A step function: one eager (un-jitted) step of ``factory`` on the golden inputs.

    The golden ``lr`` of a step (the scheduled lr) is given as a constant ``lr_schedule`` (the
    base ``lr`` stays the decay's); the spec preset ``adamw``'s ``maximize`` is emulated by
    negating the gradient (exact). Parameters may be float64, float32, bfloat16 or float16 (NumPy
    arrays of ``ml_dtypes`` types), or are rounded to ``param_dtype`` (a jax dtype) first; the
    state is taken and returned in the compute dtype (float32 for half precision), a half-precision
    parameter widened (exactly) to float32 when ``param_dtype`` is given. Everything runs on
    ``device`` (the step count and the scalars included).
    """
    state_type = _STATE_TYPES[preset]

    def put(a, dtype=None):
        x = jax.device_put(jnp.asarray(np.array(a)), device)
        return x if dtype is None else x.astype(dtype)

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
        p = put(param, param_dtype)
        cdt = compute_dtype(p.dtype)
        st = state_type(step=jnp.asarray(state["step"], jnp.int32),
                        **{k: (put(state[k]).astype(cdt) if k in state else None)
                           for k in state_type._fields if k != "step"})
        updates, new_state = tx.update(put(grad, param_dtype), st, p)
        new_p = optax.apply_updates(p, updates)
        if param_dtype is not None:
            new_p = new_p.astype(cdt)
        out = {k: np.asarray(v) for k, v in new_state._asdict().items()
               if v is not None and k != "step"}
        out["step"] = int(new_state.step)
        return np.asarray(new_p), out

    return step_fn


def golden_step_functions(device: str | None = None, *, param_dtype: str | None = None
                          ) -> list[tuple[str, str, Callable]]:
    """``(implementation, preset, step_fn)`` for every spec preset this backend implements.

    ``step_fn`` runs on ``device`` (CPU by default) in the golden case's dtype, or with parameters
    of ``param_dtype`` (``"bfloat16"``, ``"float16"``: for float32 cases; the results come back
    as float32). Turns on ``jax_enable_x64`` (needed for the float64 cases; float32 arrays stay
    float32).
    """
    if param_dtype is not None and param_dtype not in HALF_DTYPES:
        raise ValueError(f"param_dtype must be {' or '.join(HALF_DTYPES)}, got {param_dtype!r}")
    jax.config.update("jax_enable_x64", True)
    dev = resolve_device(device)
    half = None if param_dtype is None else HALF_DTYPES[param_dtype]

    def step(factory, preset, sage):
        return _golden_step(factory, preset, sage, dev, half)

    return [
        ("adamw_sage(sage=False)", "bert-adamw", step(adamw_sage, "bert-adamw", False)),
        ("adamw_sage", "adamw-sage", step(adamw_sage, "adamw-sage", True)),
        ("adamax_sage(sage=False)", "bert-adamax", step(adamax_sage, "bert-adamax", False)),
        ("adamax_sage", "adamax-sage", step(adamax_sage, "adamax-sage", True)),
        ("adam_sage(sage=False)", "adamw", step(adam_sage, "adamw", False)),
        ("adam_sage", "adam-sage", step(adam_sage, "adam-sage", True)),
    ]
