"""Linear, Embedding, LayerNorm and Dropout, with torch.nn's layouts and default initializations.

Initialization follows torch.nn so that a torch twin is a plain weight copy:
Linear weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); Embedding ~ N(0, 1);
LayerNorm weight 1, bias 0. Linear biases are therefore *not* zero, which matters under SAGE:
an exactly-zero entry has sensitivity |0 * g| = 0 forever and never moves (docs/spec.md section 5).

``fused`` (chosen at construction) picks the function a layer computes with: the fused one of
:mod:`minisage.fast` (True, the default: for training speed) or the reference form of
:mod:`minisage.functional` (False). Both compute the same function, to rounding.
"""

from __future__ import annotations

import math

import numpy as np

import minisage.fast as fast
import minisage.functional as F
from minisage.autograd import Tensor
from minisage.nn.module import Module, Parameter


class Linear(Module):
    """y = x W^T + b, with W of shape (out_features, in_features) as in torch."""

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator,
                 bias: bool = True, dtype=np.float64, fused: bool = True):
        bound = 1 / math.sqrt(in_features)
        weight = rng.uniform(-bound, bound, (out_features, in_features))  # (out, in)
        self.weight = Parameter(weight.astype(dtype))
        self.bias = None
        if bias:
            self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype))
        self.linear = fast.linear if fused else F.linear

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x, self.weight, self.bias)


class Embedding(Module):
    """Rows of a (num_embeddings, dim) table picked by integer ids."""

    def __init__(self, num_embeddings: int, dim: int, rng: np.random.Generator, dtype=np.float64,
                 fused: bool = True):
        self.weight = Parameter(rng.standard_normal((num_embeddings, dim)).astype(dtype))
        self.embedding = fast.embedding if fused else F.embedding

    def forward(self, ids) -> Tensor:
        return self.embedding(ids, self.weight)


class LayerNorm(Module):
    """Normalization over the last axis with a learned scale (1) and shift (0)."""

    def __init__(self, dim: int, eps: float = 1e-5, dtype=np.float64, fused: bool = True):
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype))
        self.eps = eps
        self.layer_norm = fast.layer_norm if fused else F.layer_norm

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Dropout with its own seeded generator; the identity in eval mode."""

    def __init__(self, p: float, rng: np.random.Generator):
        self.p = p
        self.rng = rng

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training, self.rng)
