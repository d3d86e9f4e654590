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
"""

import os
import sys

if "numpy" not in sys.modules:
    for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

from minisage.autograd import Tensor, no_grad  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Tensor", "no_grad", "__version__"]
