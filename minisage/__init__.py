"""minisage: a pure-NumPy, exact, educational reference implementation of SAGE.

SAGE (Liang et al., ICLR 2022) gives every parameter entry its own learning rate from its
sensitivity ``|theta * grad|``. minisage states it, and everything it needs, in NumPy:

- :mod:`minisage.autograd` -- a small reverse-mode autograd engine (``Tensor``, ``no_grad``);
- :mod:`minisage.functional` -- softmax, cross_entropy, layer_norm, gelu, attention, ... on the
  engine, in their reference forms; :mod:`minisage.fast` -- the same functions fused for speed;
- :mod:`minisage.spec` -- every optimizer rule as a pure NumPy function (the golden reference);
- :mod:`minisage.optim`, :mod:`minisage.nn` -- stateful optimizers and a small Transformer.

Importing minisage changes nothing in the process (environment, threads, allocator). The command
line, the lessons and the benchmark tune their own process; a library user can opt in with
:func:`minisage.runtime.tuned`.
"""

from minisage.autograd import Tensor, no_grad

__version__ = "0.1.0"
__all__ = ["Tensor", "no_grad", "__version__"]
