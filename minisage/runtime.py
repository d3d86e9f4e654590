"""Process tuning for the programs that own their process, and as an explicit opt-in for others.

Importing minisage changes nothing in the host process. Two settings make its small-matrix work
faster, and both are process-wide, so they belong to whoever owns the process: the command line,
the lessons and the benchmark use them; a library user may opt in::

    from minisage import runtime
    with runtime.tuned():              # one BLAS thread, freed memory kept for reuse
        result = train(config)

- **BLAS threads.** The matrices of toy models are small: one BLAS thread is faster than several,
  and on a busy 2-core machine several threads can make training 20x slower. ``tuned(threads=n)``
  sets NumPy's BLAS thread count with ``threadpoolctl`` for the block and restores it after.
- **Freed memory.** The engine makes many short-lived arrays of 0.1 to 10 MiB. glibc's malloc
  returns every freed block of 128 KiB or more to the operating system, so each new array is fresh
  memory that page-faults on first touch (about 250 faults per MiB). ``keep_freed_memory=True``
  (Linux with glibc only) raises malloc's mmap threshold to 64 MiB and its trim threshold to
  512 MiB for the block, so that freed blocks are reused; on exit both go back to glibc's defaults
  and the kept memory is returned (``malloc_trim``).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator

from threadpoolctl import threadpool_limits

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # both thresholds' glibc defaults


def _libc():
    """glibc, or None where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def keep_freed_memory(mmap_threshold: int = 64 << 20,
                      trim_threshold: int = 512 << 20) -> Iterator[bool]:
    """Within the block, malloc reuses freed blocks below ``mmap_threshold`` bytes and keeps up to
    ``trim_threshold`` bytes of freed memory. Yields whether it could (glibc only)."""
    libc = _libc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


@contextlib.contextmanager
def tuned(threads: int | None = 1, keep_memory: bool = True) -> Iterator[None]:
    """Within the block: ``threads`` BLAS threads (None: leave them), and freed memory kept for
    reuse if ``keep_memory``. Everything is restored on exit."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"runtime.tuned: threads must be an integer >= 1 or None, "
                         f"got {threads!r}")
    with contextlib.ExitStack() as stack:
        if threads is not None:
            stack.enter_context(threadpool_limits(threads, user_api="blas"))
        if keep_memory:
            stack.enter_context(keep_freed_memory())
        yield


_process_settings = contextlib.ExitStack()


def tune_process(threads: int | None = 1, keep_memory: bool = True) -> None:
    """:func:`tuned` until the process ends, for a script or notebook that owns its process (the
    lessons do this). A library should use :func:`tuned` around its own work instead."""
    _process_settings.enter_context(tuned(threads, keep_memory))
