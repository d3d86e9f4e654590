"""minisage: a pure-NumPy, exact, educational reference implementation of SAGE.

SAGE (Liang et al., ICLR 2022) gives every parameter entry its own learning rate from its
sensitivity ``|theta * grad|``. minisage states it, and everything it needs, in NumPy:

- :mod:`minisage.autograd` -- a small reverse-mode autograd engine (``Tensor``, ``no_grad``);
- :mod:`minisage.functional` -- softmax, cross_entropy, layer_norm, gelu, ... on the engine;
- :mod:`minisage.spec` -- every optimizer rule as a pure NumPy function (the golden reference);
- :mod:`minisage.optim`, :mod:`minisage.nn` -- stateful optimizers and a small Transformer.

BLAS threads: the matrices of toy models are small, so one BLAS thread is faster than several, and
on a busy 2-core machine several threads can make training 20x slower. Unless you set
``OPENBLAS_NUM_THREADS`` (or ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``) yourself, importing
minisage before NumPy asks for one thread. Importing NumPy first leaves NumPy's default alone.

Memory: the engine makes many short-lived arrays of 0.1 to 10 MiB. glibc's malloc gives every freed
block of 128 KiB or more back to the operating system, so each new array is fresh memory that
page-faults on first touch (~250 faults per MiB: 3 of the 17 ms of a lesson-size train step). On
Linux with glibc, importing minisage raises malloc's mmap and trim thresholds (as the variables
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` would, set before the process starts) so
that freed blocks are reused; the process then keeps up to 512 MiB of freed memory for reuse. Set
``MINISAGE_MALLOC=default`` to leave malloc alone.
"""

import ctypes
import os
import sys

if "numpy" not in sys.modules:
    for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

if os.environ.get("MINISAGE_MALLOC") != "default" and sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL("libc.so.6")
        _libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: blocks under 64 MiB come from the heap
        _libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: keep up to 512 MiB of it when freed
    except (OSError, AttributeError):  # not glibc
        pass

from minisage.autograd import Tensor, no_grad  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Tensor", "no_grad", "__version__"]
