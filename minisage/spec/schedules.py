"""Learning-rate schedules: plain functions from the step count to a multiplier of the base lr.

Convention for the general schedules (``constant``, ``linear_warmup_decay``, ``cosine``): ``t`` is
the number of optimizer steps already taken, 0 at the first step, exactly as
``torch.optim.lr_scheduler.LambdaLR`` evaluates its lambda. The scheduled lr of that step is
``base_lr * multiplier(t)``; pass it to ``rule.step(..., lr=...)``.

The official SAGE code keeps its schedule inside the optimizer (pytorch-pretrained-bert 0.6.0
style): ``lr_t = lr * schedule(step / t_total, warmup)`` where ``step / t_total`` is the progress
fraction ``x``. Those functions (``warmup_linear``, ``warmup_constant``, ``warmup_linear_xdl``)
take ``x``, as the originals do; :func:`official_lr` applies one the way the official optimizers
do.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def constant(t: int) -> float:
    """``1.0`` at every step."""
    return 1.0


def warmup_linear(x: float, warmup: float = 0.002) -> float:
    """The official default schedule (``pytorch_pretrained_bert.optimization.warmup_linear`` 0.6.0).

    ``x / warmup`` while ``x < warmup``, else ``1 - x``, where ``x = step / t_total``.

    Warning: it is not continuous. At the end of warmup it jumps from about 1 down to
    ``1 - warmup`` (0.9 at warmup=0.1); after ``t_total`` steps it goes negative. Both are
    reproduced on purpose. :func:`linear_warmup_decay` is the continuous version.
    """
    if x < warmup:
        return x / warmup
    return 1.0 - x


def warmup_constant(x: float, warmup: float = 0.002) -> float:
    """Official ``warmup_constant``: ``x / warmup`` while ``x < warmup``, else ``1``."""
    if x < warmup:
        return x / warmup
    return 1.0


def warmup_linear_xdl(x: float, warmup: float = 0.002) -> float:
    """Official ``warmup_linear_xdl`` (``module/bert_optim.py``): ``x / warmup`` while
    ``x < warmup``, else ``(1 - x) / (1 - warmup)`` (continuous at the end of warmup; with
    warmup=-1 it is ``(1 - x) / 2``)."""
    if x < warmup:
        return x / warmup
    return (1.0 - x) / (1.0 - warmup)


#: The schedules the official optimizers can name with ``schedule=``. (The official
#: ``warmup_cosine`` calls ``torch.cos`` on a Python float and fails after warmup, so it is not
#: offered; the official code also silently falls back to ``warmup_linear`` on an unknown name,
#: where the spec raises ValueError.)
OFFICIAL_SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "warmup_linear": warmup_linear,
    "warmup_constant": warmup_constant,
    "warmup_linear_xdl": warmup_linear_xdl,
}


def official_lr(lr: float, step: int, t_total: int, warmup: float, schedule: str) -> float:
    """The scheduled lr exactly as the official optimizers compute it.

    ``lr`` if ``t_total == -1`` (constant), else ``lr * schedule(step / t_total, warmup)``. Which
    ``step`` is passed differs: the AdamW pair passes the count *after* this step's increment, the
    Adamax pair the count *before* it (so with warmup their first update is zero).
    """
    if t_total == -1:
        return lr
    return lr * OFFICIAL_SCHEDULES[schedule](step / t_total, warmup)


def linear_warmup_decay(t: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then linear decay to 0 at ``total_steps``.

    ``t / warmup_steps`` while ``t < warmup_steps``, else
    ``max(0, (total_steps - t) / (total_steps - warmup_steps))`` -- the multiplier of
    ``transformers.get_linear_schedule_with_warmup`` (denominators floored at 1).
    """
    if t < warmup_steps:
        return t / max(1, warmup_steps)
    return max(0.0, (total_steps - t) / max(1, total_steps - warmup_steps))


def cosine(t: int, warmup_steps: int, total_steps: int, num_cycles: float = 0.5) -> float:
    """Linear warmup, then cosine decay ``0.5 * (1 + cos(2 pi num_cycles progress))``, floored at 0.

    ``progress = (t - warmup_steps) / (total_steps - warmup_steps)``; the default half cycle goes
    from 1 to 0 -- the multiplier of ``transformers.get_cosine_schedule_with_warmup``.
    """
    if t < warmup_steps:
        return t / max(1, warmup_steps)
    progress = (t - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))


def make_schedule(name: str, **kwargs) -> Callable[[int], float]:
    """A schedule as a function ``t -> multiplier``, ``t`` = steps already taken (0 first).

    ``"constant"``; ``"linear"`` (``warmup_steps``, ``total_steps``); ``"cosine"``
    (``warmup_steps``, ``total_steps``, optional ``num_cycles``); ``"warmup_linear"`` -- the
    official one, with its jump (``warmup`` as a fraction, ``t_total``), evaluated at
    ``x = t / t_total``.
    """
    def need(*keys):
        extra = set(kwargs) - set(keys)
        missing = [k for k in keys if k not in kwargs and k != "num_cycles"]
        if extra or missing:
            raise ValueError(f"schedule {name!r} takes {', '.join(keys) or 'no arguments'}; "
                             f"missing {missing}, unexpected {sorted(extra)}")

    if name == "constant":
        need()
        return constant
    if name == "linear":
        need("warmup_steps", "total_steps")
        w, n = int(kwargs["warmup_steps"]), int(kwargs["total_steps"])
        return lambda t: linear_warmup_decay(t, w, n)
    if name == "cosine":
        need("warmup_steps", "total_steps", "num_cycles")
        w, n = int(kwargs["warmup_steps"]), int(kwargs["total_steps"])
        c = float(kwargs.get("num_cycles", 0.5))
        return lambda t: cosine(t, w, n, c)
    if name == "warmup_linear":
        need("warmup", "t_total")
        w, n = float(kwargs["warmup"]), int(kwargs["t_total"])
        if n <= 0:
            raise ValueError("schedule 'warmup_linear': t_total must be a positive integer, "
                             f"got {n}")
        return lambda t: warmup_linear(t / n, w)
    raise ValueError(f"unknown schedule {name!r}; choose one of: constant, linear, cosine, "
                     "warmup_linear")
