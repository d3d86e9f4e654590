"""The official SAGE split: which parameters get SAGE, and which get weight decay, by name.

In the official experiments (cliang1453/SAGE) SAGE is applied only to the Transformer's attention
(query, key, value, output projection) and feed-forward weights and biases; embeddings, LayerNorms,
the pooler and task heads take the plain rule. Weight decay applies to every parameter except
biases and LayerNorm parameters. Both are decided by substring match on the parameter's dotted
name, as the official code does. This module is the one home of those pattern lists:
:mod:`minisage.optim`, both backends and :mod:`minisage.train` use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

#: Substrings of the parameter names that get SAGE in the official experiments (BERT names).
SAGE_PATTERNS: tuple[str, ...] = (
    "attention.self", "attention.output.dense", "output.dense", "intermediate.dense",
)
#: Substrings of the parameter names that get no weight decay in the official experiments.
NO_DECAY_PATTERNS: tuple[str, ...] = ("bias", "gamma", "beta", "LayerNorm")
#: The default no-decay patterns: the official ones plus ``norm``, because minisage's Transformer
#: (and its torch twin) names its LayerNorms ``..._norm`` (e.g. ``blocks.0.attention_norm.weight``).
DEFAULT_NO_DECAY_PATTERNS: tuple[str, ...] = (*NO_DECAY_PATTERNS, "norm")


def official_group(name: str, sage_patterns: Sequence[str] = SAGE_PATTERNS,
                   no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS
                   ) -> tuple[bool, bool]:
    """``(sage, decay)`` of a parameter name: whether it contains one of ``sage_patterns``, and
    whether it contains none of ``no_decay_patterns``."""
    return (any(p in name for p in sage_patterns),
            not any(p in name for p in no_decay_patterns))


def sage_param_groups(named_parameters: Iterable[tuple[str, Any]], *,
                      sage_patterns: Sequence[str] = SAGE_PATTERNS,
                      no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS,
                      weight_decay: float = 0.01,
                      include: Callable[[Any], bool] | None = None,
                      **hparams: Any) -> list[dict[str, Any]]:
    """The official split of ``named_parameters`` into param groups.

    A parameter goes to a SAGE group (``"sage": True``) if its name contains one of
    ``sage_patterns``, and gets ``weight_decay`` unless its name contains one of
    ``no_decay_patterns`` (then 0). Returns up to four groups in the official order (plain+decay,
    SAGE+decay, plain+no decay, SAGE+no decay), empty ones left out, each with
    ``(name, parameter)`` pairs as ``params`` and ``hparams`` (e.g. ``lr``) copied in.
    ``include(parameter)``, if given, decides which parameters take part at all (the torch
    backend leaves out those with ``requires_grad=False``).

    The no-decay default adds ``"norm"`` to the official list because minisage's Transformer does
    not name its LayerNorms ``LayerNorm``; pass ``NO_DECAY_PATTERNS`` for the official list alone
    (a Hugging Face BERT names them ``LayerNorm``).
    """
    sage_patterns, no_decay_patterns = tuple(sage_patterns), tuple(no_decay_patterns)
    buckets: dict[tuple[bool, bool], list[tuple[str, Any]]] = {
        (False, True): [], (True, True): [], (False, False): [], (True, False): []}
    for name, p in named_parameters:
        if include is None or include(p):
            buckets[official_group(name, sage_patterns, no_decay_patterns)].append((name, p))
    return [{"params": params, "sage": sage, "weight_decay": weight_decay if decay else 0.0,
             **hparams}
            for (sage, decay), params in buckets.items() if params]
