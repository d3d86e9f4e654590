"""A torch twin of the minisage Transformer: same architecture, parameter names and layouts."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as TF  # noqa: N812
from torch import nn

from minisage.backends.torch.devices import resolve_device, resolve_dtype
from minisage.nn.transformer import Transformer, TransformerConfig


class _Namespace(nn.Module):
    """A named group of sub-modules, so that parameter names read like BERT's (and minisage's)."""

    def __init__(self, **children: nn.Module):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


class _SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig, sdpa: bool):
        super().__init__()
        self.sdpa = sdpa
        d = config.d_model
        self.n_heads = config.n_heads
        self.self = _Namespace(query=nn.Linear(d, d), key=nn.Linear(d, d), value=nn.Linear(d, d))
        self.output = _Namespace(dense=nn.Linear(d, d))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        B, T, D = x.shape
        H = self.n_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, D/H)
            return t.reshape(B, T, H, D // H).transpose(1, 2)

        q, k, v = heads(self.self.query(x)), heads(self.self.key(x)), heads(self.self.value(x))
        if self.sdpa:  # torch's fused kernel: softmax(q k^T / sqrt(d_head)) v, dropout inside
            mixed = TF.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout.p if self.training else 0.0, is_causal=causal)
        else:
            # scores = q k^T / sqrt(d_head)
            scores = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(D // H))  # (B, H, T, T)
            if causal:
                future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(future, -math.inf)
            weights = self.dropout(torch.softmax(scores, dim=-1))  # (B, H, T, T)
            mixed = weights @ v  # (B, H, T, D/H)
        return self.output.dense(mixed.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class _Block(nn.Module):
    def __init__(self, config: TransformerConfig, sdpa: bool):
        super().__init__()
        d = config.d_model
        self.attention_norm = nn.LayerNorm(d, eps=1e-5)
        self.attention = _SelfAttention(config, sdpa)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-5)
        self.intermediate = _Namespace(dense=nn.Linear(d, 4 * d))
        self.output = _Namespace(dense=nn.Linear(4 * d, d))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), causal))  # (B, T, D)
        hidden = TF.gelu(self.intermediate.dense(self.ffn_norm(x)))  # exact (erf) GELU, (B, T, 4D)
        return x + self.dropout(self.output.dense(hidden))  # (B, T, D)


class TorchTransformer(nn.Module):
    """The torch twin of :class:`minisage.nn.Transformer`: same architecture, same parameter
    names and layouts (Linear weights ``(out, in)``), same methods (``forward`` -> hidden states,
    ``lm_logits``, ``classify_logits``) and the same ``config``. Build one with :func:`to_torch`.

    ``sdpa`` (default True) computes attention with ``torch.nn.functional.
    scaled_dot_product_attention``, torch's fastest path; False spells it out (scores, mask,
    softmax, dropout, product), as minisage's reference form does. Dropout uses torch's own
    generator, so with ``dropout > 0`` in training mode its masks differ from minisage's;
    everything else agrees to rounding error.
    """

    def __init__(self, config: TransformerConfig, sdpa: bool = True):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embeddings = _Namespace(word=nn.Embedding(config.vocab_size, d),
                                     position=nn.Embedding(config.max_len, d))
        self.blocks = nn.ModuleList([_Block(config, sdpa) for _ in range(config.n_layers)])
        self.final_norm = nn.LayerNorm(d, eps=1e-5)
        self.lm_head = nn.Linear(d, config.vocab_size)
        if config.num_classes:
            self.classifier = nn.Linear(d, config.num_classes)
        self.dropout = nn.Dropout(config.dropout)

    def _ids(self, ids) -> torch.Tensor:
        device = self.lm_head.weight.device
        if isinstance(ids, torch.Tensor):
            return ids.to(device=device, dtype=torch.long)
        return torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device)

    def forward(self, ids, causal: bool | None = None) -> torch.Tensor:
        ids = self._ids(ids)
        B, T = ids.shape
        if T > self.config.max_len:
            raise ValueError(f"TorchTransformer: sequence length {T} exceeds max_len "
                             f"{self.config.max_len}")
        causal = self.config.causal if causal is None else causal
        positions = torch.arange(T, device=ids.device)
        x = self.embeddings.word(ids) + self.embeddings.position(positions)  # (B, T, D)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, causal)
        return self.final_norm(x)  # (B, T, D)

    def lm_logits(self, ids, causal: bool | None = None) -> torch.Tensor:
        return self.lm_head(self.forward(ids, causal))  # (B, T, V)

    def classify_logits(self, ids, causal: bool | None = None) -> torch.Tensor:
        if not self.config.num_classes:
            raise ValueError("TorchTransformer: this model has no classification head "
                             "(num_classes=0)")
        return self.classifier(self.forward(ids, causal)[:, 0, :])  # (B, C)


def to_torch(model: Transformer, *, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None, sdpa: bool = True) -> TorchTransformer:
    """A :class:`TorchTransformer` with ``model``'s architecture and a copy of its weights.

    ``dtype`` defaults to the model's own (``model.config.dtype``); ``device`` to the CPU. The
    twin is in the same train/eval mode as ``model``; ``sdpa`` picks its attention (see
    :class:`TorchTransformer`). Raises ValueError if ``model`` is not a
    minisage Transformer or if its parameter names do not map one to one.
    """
    if not isinstance(model, Transformer):
        raise ValueError(f"to_torch: expected a minisage Transformer, got {type(model).__name__}")
    dev = resolve_device(device)
    dt = resolve_dtype(model.config.dtype if dtype is None else dtype)
    twin = TorchTransformer(model.config, sdpa=sdpa)
    ours = dict(model.named_parameters())
    theirs = dict(twin.named_parameters())
    if list(ours) != list(theirs):
        raise ValueError(f"to_torch: parameter names differ: minisage only "
                         f"{sorted(set(ours) - set(theirs))}, torch only "
                         f"{sorted(set(theirs) - set(ours))}")
    with torch.no_grad():
        for name, p in theirs.items():
            src = ours[name].data
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"to_torch: {name} has shape {src.shape}, the twin expects "
                                 f"{tuple(p.shape)}")
            p.data = torch.tensor(np.array(src), dtype=dt)
    twin.to(dev)
    twin.train(model.training)
    return twin
