"""A small reverse-mode autograd engine over NumPy arrays.

Memory: the engine makes many short-lived arrays of 0.1 to 10 MiB. glibc's malloc hands every block
of 128 KiB or more back to the operating system when it is freed, so each new array is fresh memory
that page-faults on first touch (~250 faults per MiB: 3 of the 17 ms of a lesson-size train step).
On Linux with glibc, importing the engine raises malloc's mmap and trim thresholds (what the
variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` do when set before a process
starts), so that freed blocks are reused; the price is that the process keeps up to 512 MiB of
freed memory for reuse. ``MINISAGE_MALLOC=default`` in the environment leaves malloc alone.
"""

import ctypes
import os
import sys

from minisage.autograd.tensor import Tensor, no_grad, unbroadcast

__all__ = ["Tensor", "no_grad", "unbroadcast"]


def _reuse_freed_memory() -> None:
    if os.environ.get("MINISAGE_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: blocks under 64 MiB come from the heap
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: keep up to 512 MiB of it when freed
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


_reuse_freed_memory()
