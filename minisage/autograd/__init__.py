"""A small reverse-mode autograd engine over NumPy arrays."""

from minisage.autograd.tensor import Tensor, no_grad, unbroadcast

__all__ = ["Tensor", "no_grad", "unbroadcast"]
