"""Devices of the jax backend: a clear error instead of jax's own."""

from __future__ import annotations

import jax


def resolve_device(device: str | None = None):
    """A jax device for ``"cpu"`` or ``"cuda"`` (``"cuda:N"``); ValueError if there is none."""
    name = "cpu" if device is None else str(device)
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got {device!r}")
    try:
        devices = jax.devices("gpu" if kind == "cuda" else "cpu")
    except RuntimeError:
        raise ValueError(f"device {name!r} requested but jax {jax.__version__} has no CUDA "
                         "backend here (no NVIDIA GPU or a CPU-only jaxlib)") from None
    i = int(index) if index else 0
    if not 0 <= i < len(devices):
        raise ValueError(f"device {name!r}: jax sees {len(devices)} {kind} device(s)")
    return devices[i]
