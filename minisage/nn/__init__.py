"""Modules: Parameter, Module, Linear, Embedding, LayerNorm, Dropout and a small Transformer."""

from minisage.nn.layers import Dropout, Embedding, LayerNorm, Linear
from minisage.nn.module import Module, Parameter
from minisage.nn.transformer import Transformer, TransformerConfig

__all__ = [
    "Module", "Parameter", "Linear", "Embedding", "LayerNorm", "Dropout",
    "Transformer", "TransformerConfig",
]
