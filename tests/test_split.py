"""minisage.spec.split: the pattern sets of common architectures and the empty-selection check.

The parameter names below are those of one block of each ``transformers`` 5.x model built from a
config (listed by hand from ``model.named_parameters()``; the tests do not need transformers).
"""

from __future__ import annotations

import warnings

import pytest

from minisage.spec import split

BLOCK_NAMES = {
    "bert": ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight",
             "encoder.layer.0.attention.self.query.weight",
             "encoder.layer.0.attention.self.query.bias",
             "encoder.layer.0.attention.self.key.weight",
             "encoder.layer.0.attention.self.value.weight",
             "encoder.layer.0.attention.output.dense.weight",
             "encoder.layer.0.attention.output.LayerNorm.weight",
             "encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.output.dense.weight",
             "encoder.layer.0.output.dense.bias", "encoder.layer.0.output.LayerNorm.bias",
             "pooler.dense.weight"],
    "distilbert": ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight",
                   "transformer.layer.0.attention.q_lin.weight",
                   "transformer.layer.0.attention.k_lin.weight",
                   "transformer.layer.0.attention.v_lin.bias",
                   "transformer.layer.0.attention.out_lin.weight",
                   "transformer.layer.0.sa_layer_norm.weight",
                   "transformer.layer.0.ffn.lin1.weight", "transformer.layer.0.ffn.lin2.bias",
                   "transformer.layer.0.output_layer_norm.weight"],
    "gpt2": ["wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.weight",
             "h.0.attn.c_attn.bias", "h.0.attn.c_proj.weight", "h.0.ln_2.bias",
             "h.0.mlp.c_fc.weight", "h.0.mlp.c_proj.bias", "ln_f.weight"],
    "vit": ["embeddings.cls_token", "embeddings.patch_embeddings.projection.weight",
            "layers.0.attention.q_proj.weight", "layers.0.attention.k_proj.bias",
            "layers.0.attention.v_proj.weight", "layers.0.attention.o_proj.weight",
            "layers.0.layernorm_before.weight", "layers.0.mlp.fc1.weight",
            "layers.0.mlp.fc2.bias", "layernorm.weight", "pooler.dense.weight"],
    "llama": ["embed_tokens.weight", "layers.0.self_attn.q_proj.weight",
              "layers.0.self_attn.k_proj.weight", "layers.0.self_attn.v_proj.weight",
              "layers.0.self_attn.o_proj.weight", "layers.0.mlp.gate_proj.weight",
              "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
              "layers.0.input_layernorm.weight", "norm.weight"],
}
# What each family's SAGE set must select: the attention projections and the feed-forward layers.
IN_BLOCKS = ("attention.self", "attention.output.dense", "intermediate.dense", "output.dense",
             "_lin.", "ffn.lin", "attn.c_", "mlp.", "_proj.")


def expected_sage(name: str) -> bool:
    return any(p in name for p in IN_BLOCKS) and "LayerNorm" not in name and "pooler" not in name


@pytest.mark.parametrize("family", list(BLOCK_NAMES))
def test_each_family_set_selects_exactly_attention_and_feed_forward(family):
    names = BLOCK_NAMES[family]
    groups = split.sage_param_groups([(n, None) for n in names], sage_patterns=family)
    chosen = {n for g in groups if g["sage"] for n, _ in g["params"]}
    assert chosen == {n for n in names if expected_sage(n)}, family
    assert len(chosen) >= 4
    # the official (BERT) set alone would give these architectures no SAGE at all
    if family in ("distilbert", "gpt2", "llama"):
        assert not {n for n in names if split.official_group(n)[0]}  # the official set misses


def test_all_is_the_union_and_unknown_names_fail():
    union = split.pattern_set("all")
    assert set(union) == {p for s in split.SAGE_PATTERN_SETS.values() for p in s}
    assert len(union) == len(set(union))
    for names in BLOCK_NAMES.values():
        assert {n for n in names if split.official_group(n, "all")[0]} == {
            n for n in names if expected_sage(n)}
    with pytest.raises(ValueError, match="unknown SAGE pattern set 'gpt3'.*bert, distilbert"):
        split.pattern_set("gpt3")
    # a string is a set's name, never a sequence of one-letter patterns
    with pytest.raises(ValueError, match="unknown SAGE pattern set 'attention'"):
        split.sage_param_groups([("x.attention.weight", None)], sage_patterns="attention")


def test_an_empty_selection_warns_naming_the_patterns_names_and_fitting_sets():
    named = [(n, None) for n in BLOCK_NAMES["distilbert"]]
    with pytest.warns(split.NoSageWarning) as record:
        groups = split.sage_param_groups(named, on_no_sage="warn")
    message = str(record[0].message)
    assert "sage_patterns ('attention.self'" in message
    assert "none of the 10 parameters ('embeddings.word_embeddings.weight'" in message
    assert "'distilbert' (6)" in message and "'llama'" not in message
    assert not any(g["sage"] for g in groups)
    with pytest.raises(ValueError, match="selects none of the 10 parameters"):
        split.sage_param_groups(named, on_no_sage="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split.sage_param_groups(named, on_no_sage="ignore")
        split.sage_param_groups(named)  # None: no check (a plain preset's groups)
        split.sage_param_groups(named, sage_patterns="distilbert", on_no_sage="raise")
    with pytest.raises(ValueError, match="on_no_sage must be one of warn, raise, ignore"):
        split.sage_param_groups(named, on_no_sage="loud")


def test_select_functions_replace_the_patterns():
    names = BLOCK_NAMES["gpt2"]
    groups = split.sage_param_groups([(n, None) for n in names], on_no_sage="raise",
                                     sage_select=lambda n: ".0." in n,
                                     no_decay_select=lambda n: n.startswith("w"))
    assert {n for g in groups if g["sage"] for n, _ in g["params"]} == {
        n for n in names if ".0." in n}
    assert {n for g in groups if g["weight_decay"] == 0 for n, _ in g["params"]} == {
        "wte.weight", "wpe.weight"}
    with pytest.raises(ValueError, match="the sage_select function selects none.*'gpt2' \\(5\\)"):
        split.sage_param_groups([(n, None) for n in names], sage_select=lambda n: False,
                                on_no_sage="raise")
