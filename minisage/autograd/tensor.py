"""The reverse-mode autograd engine: Tensor, the graph, backward, the primitives with their VJPs.

Every operation builds a new Tensor that remembers its parents and a vector-Jacobian product (VJP):
given the gradient ``g`` of the loss with respect to the operation's output, the VJP returns the
gradient with respect to each parent. ``backward`` walks the graph in reverse topological order,
calling each VJP once and summing the contributions a node receives from all of its uses.

Conventions (each pinned by a test):

- Gradients accumulate across ``backward`` calls, as in torch: call ``zero_grad`` (or set
  ``x.grad = None``) between steps. Only leaves (tensors created with ``requires_grad=True``, not
  produced by an operation) keep a ``.grad``.
- ``backward`` frees the graph as it goes, as torch does: each node lets go of its VJP (and the
  arrays it saved) and its parents once used, so memory falls during the backward pass. A second
  ``backward`` through the same graph raises; ``backward(retain_graph=True)`` keeps it.
- A float array keeps its dtype (float32 in gives float32 values and gradients, no silent upcast);
  Python numbers and lists become float64. Integer arrays may be data but cannot require grad.
- Kinks: relu'(0) = 0; |x|'(0) = 0; ties in ``max`` share the gradient equally;
  sqrt'(0) = +inf, as in torch (``g / (2 sqrt(x))``).
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Within this block operations record no graph (their results do not require grad)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` down to ``shape``: the VJP of NumPy broadcasting, shared by every primitive.

    A broadcast input was used once per copy, so its gradient is the sum over the copies.
    """
    if grad.shape == shape:
        return grad
    # Leading axes that broadcasting added (a bias, say).
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    # Axes where the input had length 1.
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad


def _as_array(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data
    array = np.asarray(data)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    return array


class Tensor:
    """An ndarray with a gradient. ``Tensor(array, requires_grad=True)`` makes a leaf."""

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_vjp", "name")
    __array_ufunc__ = None  # ndarray <op> Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        self.data = _as_array(data)
        if requires_grad and not np.issubdtype(self.data.dtype, np.floating):
            raise TypeError(
                f"only floating-point tensors can require grad, got dtype {self.data.dtype}"
            )
        self.requires_grad = bool(requires_grad)
        self.grad: np.ndarray | None = None
        self._parents: tuple[Tensor, ...] = ()
        self._vjp = None
        self.name = name

    # ----- the graph -------------------------------------------------------------------------
    @staticmethod
    def make(data: np.ndarray, parents: tuple[Tensor, ...], vjp) -> Tensor:
        """The result of a primitive: records ``parents`` and ``vjp(g) -> grads`` if grad is on."""
        out = Tensor(data)
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._vjp = vjp
        return out

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` is the gradient of the final scalar with respect to ``self``; it may be omitted
        only when ``self`` has a single element (it is then 1). The graph is freed on the way
        unless ``retain_graph``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no graph recorded)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward: grad can be omitted only for a single-element tensor, "
                    f"but this one has shape {self.shape}; pass grad= of that shape"
                )
            grad = np.ones_like(self.data)
        grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward: grad has shape {grad.shape}, tensor has {self.shape}")

        grads = {id(self): grad}
        order = _topological_order(self)
        while order:
            node = order.pop()  # reverse topological order; popped, it can be freed once used
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._vjp is None:  # a leaf: keep its gradient, in its own dtype and memory
                if node.grad is None:
                    node.grad = np.array(g, dtype=node.dtype)
                else:
                    node.grad += g
                continue
            parents, parent_grads = node._parents, node._vjp(g)
            if not retain_graph:
                node._parents, node._vjp = (), _freed
            for parent, parent_grad in zip(parents, parent_grads):
                if parent_grad is None or not parent.requires_grad:
                    continue
                key = id(parent)
                grads[key] = parent_grad if key not in grads else grads[key] + parent_grad

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    # ----- array facts -----------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    def __len__(self) -> int:
        return len(self.data)

    def item(self) -> float:
        return self.data.item()

    def numpy(self) -> np.ndarray:
        return self.data

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{grad})"

    # ----- elementwise arithmetic (broadcasting) ---------------------------------------------
    def _lift(self, other) -> Tensor:
        if isinstance(other, Tensor):
            return other
        if isinstance(other, numbers.Number) and self.dtype.kind == "f":
            return Tensor(np.asarray(other, dtype=self.dtype))  # a number takes a float's dtype
        return Tensor(other)

    def _binary(self, other, op_name: str, forward, grad_a, grad_b) -> Tensor:
        """``forward(a, b)`` with broadcasting; ``grad_a(g, a, b, out)`` and ``grad_b(...)`` are
        the VJPs before unbroadcasting, called only for operands that require grad."""
        a, b = self, self._lift(other)
        try:
            out = forward(a.data, b.data)
        except ValueError:
            raise ValueError(
                f"{op_name}: shapes {a.shape} and {b.shape} cannot be broadcast together"
            ) from None
        return Tensor.make(out, (a, b), lambda g: tuple(
            unbroadcast(grad(g, a.data, b.data, out), p.shape) if p.requires_grad else None
            for grad, p in ((grad_a, a), (grad_b, b))
        ))

    def __add__(self, other):
        return self._binary(other, "add", np.add, lambda g, a, b, out: g, lambda g, a, b, out: g)

    def __sub__(self, other):
        return self._binary(other, "sub", np.subtract, lambda g, a, b, out: g,
                            lambda g, a, b, out: -g)

    def __mul__(self, other):
        return self._binary(other, "mul", np.multiply, lambda g, a, b, out: g * b,
                            lambda g, a, b, out: g * a)

    def __truediv__(self, other):
        # d(a/b)/db = -a/b^2 = -out/b
        return self._binary(other, "div", np.divide, lambda g, a, b, out: g / b,
                            lambda g, a, b, out: -g * out / b)

    def __radd__(self, other):
        return self._lift(other) + self

    def __rsub__(self, other):
        return self._lift(other) - self

    def __rmul__(self, other):
        return self._lift(other) * self

    def __rtruediv__(self, other):
        return self._lift(other) / self

    def __neg__(self):
        return Tensor.make(-self.data, (self,), lambda g: (-g,))

    def __pow__(self, exponent):
        if not isinstance(exponent, numbers.Real):
            raise TypeError("pow: the exponent must be a Python number")
        x, p = self.data, exponent.item() if isinstance(exponent, np.generic) else exponent
        # d(x^p)/dx = p x^(p-1); 0 for p = 0, also at x = 0 (as torch)
        return Tensor.make(x**p, (self,), lambda g: (g * p * x ** (p - 1) if p else 0 * g,))

    # ----- matrix product (batched, broadcasting over leading axes) --------------------------
    def __matmul__(self, other):
        a, b = self, self._lift(other)
        # 1-D operands are promoted to matrices (as np.matmul does), then the added axis removed.
        a2 = a.data[None, :] if a.ndim == 1 else a.data  # (..., n, k)
        b2 = b.data[:, None] if b.ndim == 1 else b.data  # (..., k, m)
        if a.ndim == 0 or b.ndim == 0 or a2.shape[-1] != b2.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align")
        try:
            out2 = a2 @ b2  # (..., n, m)
        except ValueError:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} cannot be broadcast together"
            ) from None
        out = out2
        if a.ndim == 1:
            out = out.squeeze(-2)
        if b.ndim == 1:
            out = out.squeeze(-1)

        def vjp(g):
            g2 = g.reshape(out2.shape)
            # dL/dA = G B^T, dL/dB = A^T G, each summed over broadcast batch axes
            grad_a = grad_b = None
            if a.requires_grad:
                grad_a = unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
            if b.requires_grad:
                grad_b = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
            return grad_a, grad_b

        return Tensor.make(out, (a, b), vjp)

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    # ----- reductions ------------------------------------------------------------------------
    def sum(self, axis=None, keepdims: bool = False):
        shape = self.shape

        def vjp(g):
            if axis is not None and not keepdims:
                g = np.expand_dims(g, axis)
            return (np.broadcast_to(g, shape),)

        return Tensor.make(self.data.sum(axis=axis, keepdims=keepdims), (self,), vjp)

    def mean(self, axis=None, keepdims: bool = False):
        axes = range(self.ndim) if axis is None else np.atleast_1d(axis)
        count = int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)

    def max(self, axis=None, keepdims: bool = False):
        x = self.data
        peak = x.max(axis=axis, keepdims=True)

        def vjp(g):
            if not keepdims:
                g = g.reshape(peak.shape)
            # ties share the gradient equally
            is_max = (x == peak).astype(x.dtype)
            return (g * is_max / is_max.sum(axis=axis, keepdims=True),)

        out = peak if keepdims else (peak.reshape(()) if axis is None else peak.squeeze(axis))
        return Tensor.make(out, (self,), vjp)

    # ----- shape -----------------------------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        old = self.shape
        try:
            out = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape shape {old} into {shape}") from None
        return Tensor.make(out, (self,), lambda g: (g.reshape(old),))

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = axes or tuple(reversed(range(self.ndim)))
        inverse = np.argsort(axes)
        return Tensor.make(self.data.transpose(axes), (self,), lambda g: (g.transpose(inverse),))

    def __getitem__(self, index):
        index = index.data if isinstance(index, Tensor) else index
        shape, dtype = self.shape, self.dtype
        # integer arrays may repeat an index; slices and boolean masks cannot
        fancy = any(
            isinstance(i, (np.ndarray, list)) and np.asarray(i).dtype != bool
            for i in _as_tuple(index)
        )

        def vjp(g):
            grad = np.zeros(shape, dtype=dtype)
            if fancy:  # repeated indices: every use adds its share
                np.add.at(grad, index, g)
            else:
                grad[index] = g
            return (grad,)

        return Tensor.make(self.data[index], (self,), vjp)

    # ----- elementwise functions -------------------------------------------------------------
    def exp(self):
        out = np.exp(self.data)
        return Tensor.make(out, (self,), lambda g: (g * out,))

    def log(self):
        x = self.data
        return Tensor.make(np.log(x), (self,), lambda g: (g / x,))

    def tanh(self):
        out = np.tanh(self.data)
        return Tensor.make(out, (self,), lambda g: (g * (1 - out * out),))

    def sqrt(self):
        out = np.sqrt(self.data)

        def vjp(g):
            with np.errstate(divide="ignore", invalid="ignore"):
                return (g / (2 * out),)  # +inf at 0, as in torch

        return Tensor.make(out, (self,), vjp)

    def relu(self):
        positive = self.data > 0  # relu'(0) = 0
        out = np.maximum(self.data, 0)  # not x * (x > 0): that is nan at -inf, -0 below 0
        return Tensor.make(out, (self,), lambda g: (g * positive,))

    def abs(self):
        sign = np.sign(self.data)  # |x|'(0) = 0
        return Tensor.make(np.abs(self.data), (self,), lambda g: (g * sign,))

    __abs__ = abs


def _freed(g):
    raise RuntimeError("backward: this graph was freed by an earlier backward; call "
                       "backward(retain_graph=True) the first time to go through it again")


def _as_tuple(index) -> tuple:
    return index if isinstance(index, tuple) else (index,)


def _topological_order(root: Tensor) -> list[Tensor]:
    """Nodes that require grad, each after all of its parents (iterative: no recursion limit)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in visited)
    return order
