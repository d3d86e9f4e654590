"""A small pre-LayerNorm Transformer with a language-modeling head and a classification head.

Parameter names follow BERT's, so that the official SAGE split (SAGE on names containing
``attention.self``, ``attention.output.dense``, ``intermediate.dense`` or ``output.dense``; the
plain rule elsewhere) selects exactly the attention and feed-forward weights and biases:

    embeddings.word.weight                     (V, D)  token embedding
    embeddings.position.weight                 (T, D)  learned positions
    blocks.{i}.attention_norm.{weight,bias}    (D,)    LayerNorm before attention
    blocks.{i}.attention.self.{query,key,value}.{weight,bias}   (D, D), (D,)
    blocks.{i}.attention.output.dense.{weight,bias}             (D, D), (D,)
    blocks.{i}.ffn_norm.{weight,bias}          (D,)    LayerNorm before the feed-forward layer
    blocks.{i}.intermediate.dense.{weight,bias}  (4D, D), (4D,)
    blocks.{i}.output.dense.{weight,bias}        (D, 4D), (D,)
    final_norm.{weight,bias}                   (D,)
    lm_head.{weight,bias}                      (V, D), (V,)   next-token / masked-token logits
    classifier.{weight,bias}                   (C, D), (C,)   first-token pooling (if num_classes)

Initialization is torch.nn's default for each layer (see ``minisage.nn.layers``). Linear biases are
drawn non-zero, so SAGE can move them: an exactly-zero entry has zero sensitivity and never moves.

``TransformerConfig(fused=True)`` (the default, for training speed) computes with the fused
functions of :mod:`minisage.fast`; ``fused=False`` with the reference forms of
:mod:`minisage.functional`. The two give the same losses and gradients to rounding.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import numpy as np

import minisage.fast as fast
import minisage.functional as F
from minisage.autograd import Tensor
from minisage.nn.layers import Dropout, Embedding, LayerNorm, Linear
from minisage.nn.module import Module

#: the floating-point types a model computes in
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 32
    max_len: int = 32
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    num_classes: int = 0  # 0: no classification head
    causal: bool = True  # False: bidirectional attention (classification, masked LM)
    dropout: float = 0.0
    dtype: str = "float64"
    fused: bool = True  # minisage.fast (speed) or False: the reference forms of functional

    def __post_init__(self):
        for field in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"TransformerConfig: {field} must be an integer >= 1, got "
                                 f"{value!r}")
        if isinstance(self.num_classes, bool) or not isinstance(
                self.num_classes, numbers.Integral) or self.num_classes < 0:
            raise ValueError(f"TransformerConfig: num_classes must be an integer >= 0 (0: no "
                             f"classification head), got {self.num_classes!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TransformerConfig: dtype must be 'float32' or 'float64', got "
                             f"{self.dtype!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TransformerConfig: d_model ({self.d_model}) must be divisible by "
                f"n_heads ({self.n_heads})"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"TransformerConfig: dropout must lie in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class Namespace(Module):
    """A named group of sub-modules, so that parameter names read like BERT's."""

    def __init__(self, **children: Module):
        for name, child in children.items():
            setattr(self, name, child)


class SelfAttention(Module):
    """Multi-head self-attention with separate query, key, value and output projections."""

    def __init__(self, config: TransformerConfig, rng: np.random.Generator):
        d, dtype, fused = config.d_model, config.dtype, config.fused
        self.n_heads = config.n_heads
        self.self = Namespace(
            query=Linear(d, d, rng, dtype=dtype, fused=fused),
            key=Linear(d, d, rng, dtype=dtype, fused=fused),
            value=Linear(d, d, rng, dtype=dtype, fused=fused),
        )
        self.output = Namespace(dense=Linear(d, d, rng, dtype=dtype, fused=fused))
        self.dropout = Dropout(config.dropout, rng)  # on the attention weights
        self.fused = fused

    def mix(self, x: Tensor, causal: bool, queries: int | None = None) -> Tensor:
        """The heads' outputs, side by side, before the output projection: (B, T, D), or
        (B, queries, D) when only the first ``queries`` positions attend (all are keys)."""
        B, T, D = x.shape
        H = self.n_heads
        if self.fused and not (self.training and self.dropout.p):  # one primitive
            return fast.self_attention(x, *(
                (lin.weight, lin.bias) for lin in (self.self.query, self.self.key,
                                                   self.self.value)), H, causal, queries)

        def heads(t: Tensor) -> Tensor:  # (B, T', D) -> (B, H, T', D/H)
            return t.reshape(B, t.shape[1], H, D // H).transpose(0, 2, 1, 3)

        asking = x if queries is None else x[:, :queries]  # (B, Tq, D)
        q, k, v = heads(self.self.query(asking)), heads(self.self.key(x)), heads(self.self.value(x))
        # softmax(q k^T / sqrt(D/H)) v per head, dropout on the weights
        mixed = F.attention(q, k, v, causal, self.dropout.p, self.training,
                            self.dropout.rng)  # (B, H, Tq, D/H)
        return mixed.transpose(0, 2, 1, 3).reshape(B, asking.shape[1], D)

    def forward(self, x: Tensor, causal: bool, queries: int | None = None) -> Tensor:
        return self.output.dense(self.mix(x, causal, queries))  # (B, Tq, D)


class Block(Module):
    """x + attention(LN(x)), then x + FFN(LN(x)), with FFN = dense(GELU(dense(x))) of width 4D.

    ``queries``: the output at the first ``queries`` positions only, (B, queries, D): every
    position is a key and a value, but only those attend and go through the feed-forward layer
    (what a classifier reading the first token needs of the last block)."""

    def __init__(self, config: TransformerConfig, rng: np.random.Generator):
        d, dtype, fused = config.d_model, config.dtype, config.fused
        self.attention_norm = LayerNorm(d, dtype=dtype, fused=fused)
        self.attention = SelfAttention(config, rng)
        self.ffn_norm = LayerNorm(d, dtype=dtype, fused=fused)
        self.intermediate = Namespace(dense=Linear(d, 4 * d, rng, dtype=dtype, fused=fused))
        self.output = Namespace(dense=Linear(4 * d, d, rng, dtype=dtype, fused=fused))
        self.dropout = Dropout(config.dropout, rng)
        self.fused = fused

    def forward(self, x: Tensor, causal: bool, queries: int | None = None) -> Tensor:
        if self.fused and not (self.training and self.dropout.p):
            return self._fused_forward(x, causal, queries)
        mixed = self.attention(self.attention_norm(x), causal, queries)  # (B, Tq, D)
        x = (x if queries is None else x[:, :queries]) + self.dropout(mixed)  # (B, Tq, D)
        hidden = F.gelu(self.intermediate.dense(self.ffn_norm(x)))  # (B, Tq, 4D)
        return x + self.dropout(self.output.dense(hidden))  # (B, Tq, D)

    def _fused_forward(self, x: Tensor, causal: bool, queries: int | None) -> Tensor:
        """The same function, one primitive per sub-layer (no dropout to apply)."""
        attention, intermediate, output = (self.attention.output.dense, self.intermediate.dense,
                                           self.output.dense)
        mixed = self.attention.mix(self.attention_norm(x), causal, queries)  # (B, Tq, D)
        x = x if queries is None else x[:, :queries]
        x = fast.residual_linear(x, mixed, attention.weight, attention.bias)  # (B, Tq, D)
        hidden = fast.linear_gelu(self.ffn_norm(x), intermediate.weight,
                                  intermediate.bias)  # (B, Tq, 4D)
        return fast.residual_linear(x, hidden, output.weight, output.bias)  # (B, Tq, D)


class Transformer(Module):
    """Token + position embeddings, ``n_layers`` pre-LN blocks, a final LayerNorm, two heads.

    ``model(ids)`` returns the final hidden states (B, T, D); ``lm_logits(ids)`` the language-model
    logits (B, T, V); ``classify_logits(ids)`` the class logits (B, C) from the first token.
    ``seed`` fixes the initialization and the dropout masks.

    The classifier reads the first position only, so the last block computes that position
    alone (``queries=1``): the same function (and, without dropout, the same numbers to
    rounding) at a fraction of the last block's cost.
    """

    def __init__(self, config: TransformerConfig, seed: int = 0):
        self.config = config
        rng = np.random.default_rng(seed)
        self.rng = rng  # after initialization, it draws the dropout masks (saved in checkpoints)
        d, dtype, fused = config.d_model, config.dtype, config.fused
        self.embeddings = Namespace(
            word=Embedding(config.vocab_size, d, rng, dtype=dtype, fused=fused),
            position=Embedding(config.max_len, d, rng, dtype=dtype, fused=fused),
        )
        self.blocks = [Block(config, rng) for _ in range(config.n_layers)]
        self.final_norm = LayerNorm(d, dtype=dtype, fused=fused)
        self.lm_head = Linear(d, config.vocab_size, rng, dtype=dtype, fused=fused)
        if config.num_classes:
            self.classifier = Linear(d, config.num_classes, rng, dtype=dtype, fused=fused)
        self.dropout = Dropout(config.dropout, rng)

    def forward(self, ids, causal: bool | None = None, queries: int | None = None) -> Tensor:
        """The final hidden states (B, T, D); ``queries``: those of the first ``queries``
        positions only, (B, queries, D), which the last block then computes alone."""
        ids = np.asarray(ids)
        B, T = ids.shape
        if T > self.config.max_len:
            raise ValueError(
                f"Transformer: sequence length {T} exceeds max_len {self.config.max_len}"
            )
        causal = self.config.causal if causal is None else causal
        word, position = self.embeddings.word, self.embeddings.position
        if self.config.fused:  # the same sum as one primitive
            x = fast.token_and_position_embedding(ids, word.weight, position.weight)
        else:
            x = word(ids) + position(np.arange(T))  # (B, T, D)
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, causal, queries if i == len(self.blocks) - 1 else None)
        return self.final_norm(x)  # (B, Tq, D)

    def lm_logits(self, ids, causal: bool | None = None) -> Tensor:
        return self.lm_head(self.forward(ids, causal))  # (B, T, V)

    def classify_logits(self, ids, causal: bool | None = None) -> Tensor:
        if not self.config.num_classes:
            raise ValueError("Transformer: this model has no classification head (num_classes=0)")
        first = self.forward(ids, causal, queries=1)[:, 0, :]  # (B, D)
        return self.classifier(first)  # (B, C)
