"""The SAGE split: which parameters get SAGE, and which get weight decay, by name.

In the official experiments (cliang1453/SAGE) SAGE is applied only to the Transformer's attention
(query, key, value, output projection) and feed-forward weights and biases; embeddings, LayerNorms,
the pooler and task heads take the plain rule. Weight decay applies to every parameter except
biases and LayerNorm parameters. Both are decided by substring match on the parameter's dotted
name, as the official code does. This module is the one home of those pattern lists, of the
pattern sets of other common architectures (:data:`SAGE_PATTERN_SETS`) and of the check that a
SAGE split selects something (:func:`check_sage_selection`): :mod:`minisage.optim`, both backends
and :mod:`minisage.train` use it.
"""

from __future__ import annotations

import warnings
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

#: The SAGE patterns of common Transformer families: the attention projections and the
#: feed-forward layers of each block (weights and biases), as the official set selects them in
#: BERT. The module names are those of the Hugging Face ``transformers`` 5.x models built from a
#: config (``<block prefix>.N.`` + the pattern + ``.weight``/``.bias``).
SAGE_PATTERN_SETS: dict[str, tuple[str, ...]] = {
    # BERT, RoBERTa, ELECTRA (and minisage's Transformer): attention.self.{query,key,value},
    # attention.output.dense, intermediate.dense, output.dense -- the official set
    "bert": SAGE_PATTERNS,
    # DistilBERT: transformer.layer.N.attention.{q,k,v,out}_lin, transformer.layer.N.ffn.lin{1,2}
    "distilbert": ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
                   "ffn.lin1", "ffn.lin2"),
    # GPT-2: h.N.attn.c_attn (query, key and value in one Conv1D), h.N.attn.c_proj,
    # h.N.mlp.c_fc, h.N.mlp.c_proj
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    # ViT: layers.N.attention.{q,k,v,o}_proj, layers.N.mlp.fc{1,2}
    "vit": ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
            "mlp.fc1", "mlp.fc2"),
    # LLaMA, Mistral (and other LLaMA-style decoders): layers.N.self_attn.{q,k,v,o}_proj,
    # layers.N.mlp.{gate,up,down}_proj
    "llama": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    # flax.linen / flax.nnx building blocks, by their dotted pytree paths: the attention's
    # {query,key,value,out} Denses under an auto-named MultiHeadDotProductAttention_N (also
    # MultiHeadAttention_N, SelfAttention_N) or a module named attention/attn (e.g.
    # layers_0.attention.query.kernel); MLPs auto-named MlpBlock_N/Mlp_N/MLP_N, or mlp.Dense_N.
    # (transformers' Flax models keep their torch module names: the sets above match them)
    "flax": ("Attention_", "attention.query.", "attention.key.", "attention.value.",
             "attention.out.", "attn.query.", "attn.key.", "attn.value.", "attn.out.",
             "MlpBlock_", "MLPBlock_", "Mlp_", "MLP_", "mlp.Dense_"),
}

#: What a SAGE optimizer does when its split selects no parameter: see check_sage_selection.
ON_NO_SAGE = ("warn", "raise", "ignore")


class NoSageWarning(UserWarning):
    """A SAGE optimizer's split selects no parameter: the run equals the plain preset's."""


def pattern_set(name: str) -> tuple[str, ...]:
    """The SAGE patterns of a family in :data:`SAGE_PATTERN_SETS`, or ``"all"``: their union."""
    if name == "all":
        return tuple(dict.fromkeys(p for s in SAGE_PATTERN_SETS.values() for p in s))
    try:
        return SAGE_PATTERN_SETS[name]
    except KeyError:
        raise ValueError(f"unknown SAGE pattern set {name!r}; choose one of: "
                         f"{', '.join(SAGE_PATTERN_SETS)}, all") from None


def resolve_patterns(sage_patterns: str | Sequence[str]) -> tuple[str, ...]:
    """``sage_patterns`` as a tuple of substrings: a string names a pattern set
    (:func:`pattern_set`), anything else is the sequence of substrings itself."""
    if isinstance(sage_patterns, str):
        return pattern_set(sage_patterns)
    return tuple(sage_patterns)


def official_group(name: str, sage_patterns: str | Sequence[str] = SAGE_PATTERNS,
                   no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS
                   ) -> tuple[bool, bool]:
    """``(sage, decay)`` of a parameter name: whether it contains one of ``sage_patterns`` (or a
    pattern set's name, see :func:`resolve_patterns`), and whether it contains none of
    ``no_decay_patterns``."""
    return (any(p in name for p in resolve_patterns(sage_patterns)),
            not any(p in name for p in no_decay_patterns))


def check_sage_selection(names: Iterable[str], selected: Iterable[str], *, selector: str,
                         on_no_sage: str = "warn", owner: str = "SAGE") -> None:
    """Warn, or refuse, when a SAGE split selects none of a model's parameters.

    ``names``: every parameter name; ``selected``: those the split gives SAGE; ``selector``: how
    they were selected, in words (e.g. ``"sage_patterns ('attention.self', ...)"``), for the
    message. When ``selected`` is empty and ``names`` is not, ``on_no_sage`` decides: ``"warn"``
    (a :class:`NoSageWarning`), ``"raise"`` (ValueError) or ``"ignore"``. The message names the
    selector, a few parameter names, and the pattern sets that would select some of them: such a
    run would silently equal the plain preset's (bert-adamw for adamw-sage), to the last digit.
    """
    if on_no_sage not in ON_NO_SAGE:
        raise ValueError(f"on_no_sage must be one of {', '.join(ON_NO_SAGE)}, "
                         f"got {on_no_sage!r}")
    names = list(names)
    if on_no_sage == "ignore" or not names or any(True for _ in selected):
        return
    examples = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
    fits = {family: sum(any(p in n for p in patterns) for n in names)
            for family, patterns in SAGE_PATTERN_SETS.items()}
    fitting = [f"{family!r} ({count})" for family, count in fits.items() if count]
    hint = (f"pattern sets that select some of them (sage_patterns=<name>): {', '.join(fitting)}"
            if fitting else f"no pattern set of {', '.join(SAGE_PATTERN_SETS)} selects any")
    message = (f"{owner}: {selector} selects none of the {len(names)} parameters ({examples}): "
               f"SAGE is applied nowhere and the run equals the plain preset's; {hint}. "
               "Pass on_no_sage='ignore' if this is intended, 'raise' to refuse.")
    if on_no_sage == "raise":
        raise ValueError(message)
    warnings.warn(message, NoSageWarning, stacklevel=3)


def sage_param_groups(named_parameters: Iterable[tuple[str, Any]], *,
                      sage_patterns: str | Sequence[str] = SAGE_PATTERNS,
                      no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS,
                      weight_decay: float = 0.01,
                      include: Callable[[Any], bool] | None = None,
                      sage_select: Callable[[str], bool] | None = None,
                      no_decay_select: Callable[[str], bool] | None = None,
                      on_no_sage: str | None = None,
                      **hparams: Any) -> list[dict[str, Any]]:
    """The official split of ``named_parameters`` into param groups.

    A parameter goes to a SAGE group (``"sage": True``) if its name contains one of
    ``sage_patterns`` (a sequence of substrings, or the name of a set in
    :data:`SAGE_PATTERN_SETS`, e.g. ``"llama"``), and gets ``weight_decay`` unless its name
    contains one of ``no_decay_patterns`` (then 0). Returns up to four groups in the official
    order (plain+decay, SAGE+decay, plain+no decay, SAGE+no decay), empty ones left out, each with
    ``(name, parameter)`` pairs as ``params`` and ``hparams`` (e.g. ``lr``) copied in.
    ``include(parameter)``, if given, decides which parameters take part at all (the torch
    backend leaves out those with ``requires_grad=False``). ``sage_select(name)`` and
    ``no_decay_select(name)``, if given, replace the patterns: they decide which names get SAGE
    and which get no decay (the torch backend selects by module type).
    ``on_no_sage`` (``"warn"``, ``"raise"``, ``"ignore"``; None: no check, for a plain preset):
    what to do when no parameter is selected (:func:`check_sage_selection`).

    The no-decay default adds ``"norm"`` to the official list because minisage's Transformer does
    not name its LayerNorms ``LayerNorm``; pass ``NO_DECAY_PATTERNS`` for the official list alone
    (a Hugging Face BERT names them ``LayerNorm``).
    """
    sage_patterns, no_decay_patterns = resolve_patterns(sage_patterns), tuple(no_decay_patterns)
    buckets: dict[tuple[bool, bool], list[tuple[str, Any]]] = {
        (False, True): [], (True, True): [], (False, False): [], (True, False): []}
    for name, p in named_parameters:
        if include is None or include(p):
            sage, decay = official_group(name, sage_patterns, no_decay_patterns)
            if sage_select is not None:
                sage = bool(sage_select(name))
            if no_decay_select is not None:
                decay = not no_decay_select(name)
            buckets[(sage, decay)].append((name, p))
    if on_no_sage is not None:
        selector = ("the sage_select function" if sage_select is not None
                    else f"sage_patterns {sage_patterns!r}")
        check_sage_selection([n for b in buckets.values() for n, _ in b],
                             [n for (sage, _), b in buckets.items() if sage for n, _ in b],
                             selector=selector, on_no_sage=on_no_sage)
    return [{"params": params, "sage": sage, "weight_decay": weight_decay if decay else 0.0,
             **hparams}
            for (sage, decay), params in buckets.items() if params]
