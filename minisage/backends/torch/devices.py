"""Devices and dtypes of the torch backend: clear errors instead of torch's own."""

from __future__ import annotations

import numpy as np
import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; a clear ValueError when it is CUDA and CUDA is missing."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available to this "
                         f"torch {torch.__version__} (no NVIDIA GPU or a CPU-only build)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got {device!r}")
    return dev


def resolve_dtype(dtype: str | torch.dtype | np.dtype, *, half: bool = False) -> torch.dtype:
    """``"float32"``, ``"float64"`` (or a torch/NumPy float dtype) as a torch dtype; with
    ``half=True`` only ``"bfloat16"`` and ``"float16"``."""
    names = ("bfloat16", "float16") if half else ("float32", "float64")
    table = {name: getattr(torch, name) for name in names}
    if isinstance(dtype, torch.dtype):
        if dtype in table.values():
            return dtype
    else:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        if name in table:
            return table[name]
    raise ValueError(f"dtype must be {' or '.join(names)}, got {dtype!r}")
