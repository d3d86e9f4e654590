"""The jax/optax backend against the spec: golden cases (eager), a jitted multi-group run, the
composable ``scale_by_sage``, and float32 with x64 off. Skipped where jax or optax is missing.

float64 needs ``jax_enable_x64``: it is turned on here, before any array is made (jax's config is
process-wide; float32 arrays stay float32 with it on).
"""

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from minisage import spec, testing  # noqa: E402
from minisage.backends import jax as bj  # noqa: E402
from minisage.cli import main  # noqa: E402
from minisage.spec import split  # noqa: E402

FUNCTIONS = bj.golden_step_functions("cpu")


@pytest.mark.parametrize("impl,preset,fn", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_golden_cases(impl, preset, fn):
    ids = testing.check_rule(fn, preset)  # both dtypes, default tolerances
    assert len(ids) == len(testing.golden_cases(preset)) >= 6
    assert testing.check_rule(fn, preset, chain=True, dtype="float64") == [
        i for i in ids if "f64" in i]


def _params(rng):
    """Four leaves, one in each official group (SAGE or not, decay or not)."""
    return {
        "blocks": [{"attention.self.query.weight": rng.standard_normal((3, 4)),
                    "intermediate.dense.bias": rng.standard_normal(4)}],
        "final_norm.weight": 1 + 0.1 * rng.standard_normal(4),
        "lm_head.weight": rng.standard_normal((2, 4)),
    }


@pytest.mark.parametrize("factory,hp", [
    (bj.adamw_sage, {"lr": 0.01, "t_total": 6, "warmup": 0.3, "beta3": 0.8}),
    (bj.adamax_sage, {"lr": 0.02}),
    (bj.adam_sage, {"lr": 0.02, "eps": 1e-6}),
], ids=["adamw_sage", "adamax_sage", "adam_sage"])
def test_jitted_official_split_matches_the_spec(factory, hp):
    """Six jitted steps of ``official_sage`` on a pytree: every leaf follows the spec rule of its
    group (SAGE or plain, weight decay or none) to 1e-10."""
    rng = np.random.default_rng(0)
    params = _params(rng)
    labels = bj.sage_labels(params)
    assert labels["blocks"][0] == {"attention.self.query.weight": "sage/decay",
                                   "intermediate.dense.bias": "sage/no_decay"}
    assert labels["final_norm.weight"] == "plain/no_decay"
    assert labels["lm_head.weight"] == "plain/decay"
    tx = bj.official_sage(factory, params, weight_decay=0.05, **hp)
    update = jax.jit(tx.update)
    jparams = jax.tree.map(jnp.asarray, params)
    opt_state = tx.init(jparams)

    sage_preset, plain_preset = {bj.adamw_sage: ("adamw-sage", "bert-adamw"),
                                 bj.adamax_sage: ("adamax-sage", "bert-adamax"),
                                 bj.adam_sage: ("adam-sage", "adamw")}[factory]
    leaves, treedef = jax.tree.flatten(params)
    ref = []
    for p, label in zip(leaves, jax.tree.leaves(labels)):
        preset = sage_preset if label.startswith("sage/") else plain_preset
        wd = 0.05 if label.endswith("/decay") else 0.0
        rule = spec.make(preset, **{k: v for k, v in {**hp, "weight_decay": wd}.items()
                                    if k in spec.defaults(preset)})
        ref.append([rule, p, rule.init(p)])
    for _ in range(6):
        grads = [rng.standard_normal(p.shape) * 0.5 for p in leaves]
        updates, opt_state = update(treedef.unflatten([jnp.asarray(g) for g in grads]),
                                    opt_state, jparams)
        jparams = optax.apply_updates(jparams, updates)
        for r, g in zip(ref, grads):
            r[1], r[2], _ = r[0].step(r[1], g, r[2])
    for got, (_, expected, _) in zip(jax.tree.leaves(jparams), ref):
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-13)
    moved = [np.abs(r[1] - p).max() for r, p in zip(ref, leaves)]
    assert min(moved) > 1e-3  # every group moved: the comparison is not of untouched leaves


def test_scale_by_sage_composes_to_adam_sage():
    """optax.chain(scale_by_sage(scale_by_adam), add_decayed_weights, scale(-lr)) is the paper's
    SAGE-Adam: it agrees with adam_sage (the spec's order of operations) to rounding."""
    rng = np.random.default_rng(1)
    lr, wd = 0.02, 0.1
    p0 = {"w": jnp.asarray(rng.standard_normal((4, 3)))}
    exact = bj.adam_sage(lr=lr, weight_decay=wd, beta3=0.7, sage_eps=1e-12)
    chained = optax.chain(bj.scale_by_sage(optax.scale_by_adam(eps=1e-8), beta3=0.7, eps=1e-12),
                          optax.add_decayed_weights(wd), optax.scale(-lr))
    (pa, sa), (pb, sb) = (p0, exact.init(p0)), (p0, chained.init(p0))
    for _ in range(5):
        g = {"w": jnp.asarray(rng.standard_normal((4, 3)))}
        ua, sa = exact.update(g, sa, pa)
        ub, sb = chained.update(g, sb, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
    np.testing.assert_allclose(np.asarray(pb["w"]), np.asarray(pa["w"]), rtol=1e-12)
    assert np.abs(np.asarray(pa["w"] - p0["w"])).min() > 1e-4
    with pytest.raises(ValueError, match="parameters"):
        exact.update(g, sa)  # SAGE needs params


def test_float32_without_x64():
    """With x64 off (jax's default) the float32 golden cases pass too: the bias corrections
    (the two presets with them here) are computed as -expm1(t log beta), accurate in float32,
    where 1 - beta2**t in float32 is off by 1.3e-5 relative at beta2 = 0.999, t = 1 (float32's
    0.999 is 0.99900001287...): most of the 2e-5 tolerance, spent on one scalar."""
    code = textwrap.dedent("""
        import jax
        from minisage import testing
        from minisage.backends import jax as bj
        assert not jax.config.jax_enable_x64
        dev = bj.resolve_device("cpu")
        for factory, preset, sage in [(bj.adamw_sage, "adamw-sage", True),
                                      (bj.adam_sage, "adam-sage", True)]:
            fn = bj.golden._golden_step(factory, preset, sage, dev)
            testing.check_rule(fn, preset, dtype="float32", chain=True)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_cli_and_device_errors(capsys):
    """crosscheck in float32 (one preset) and in the bfloat16 mode (the float32 golden cases
    with bfloat16 parameters, judged by minisage.testing.check_case_half; the SAGE presets) passes;
    cuda without a GPU is a one-line error; bad hyperparameters are refused."""
    for dtype, presets in (("float32", ["adamax-sage"]),
                           ("bfloat16", ["adamw-sage", "adamax-sage", "adam-sage"])):
        argv = ["crosscheck", "--backend", "jax", "--dtype", dtype]
        assert main(argv + [x for p in presets for x in ("--preset", p)]) == 0
        rows = [cells for cells in map(str.split, capsys.readouterr().out.splitlines())
                if len(cells) == 7 and cells[2] == dtype]
        assert [r[1] for r in rows] == presets and all(r[-1] == "ok" for r in rows)
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert main(["crosscheck", "--backend", "jax", "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "no CUDA backend" in err
    with pytest.raises(ValueError, match="beta3"):
        bj.adamw_sage(beta3=1.0)
    with pytest.raises(ValueError, match="not both"):
        bj.adamax_sage(lr=0.1, t_total=10, lr_schedule=lambda count: 0.1)


SAGE_FACTORIES = {"adamw-sage": bj.adamw_sage, "adamax-sage": bj.adamax_sage,
                  "adam-sage": bj.adam_sage}


def _leaf_state(state, key) -> dict:
    """The spec state of leaf ``key`` of a one-level dict of parameters."""
    return {name: (int(tree) if name == "step" else np.asarray(tree[key]))
            for name, tree in state._asdict().items() if tree is not None}


def _half_params(seed: int) -> dict:
    """A zero bias (float16, where it used to give 0/0) and small weights in float16 and in
    bfloat16."""
    rng = np.random.default_rng(seed)
    return {f"{kind}.{dtype}": jnp.asarray(np.asarray(scale * rng.standard_normal((8, 8)),
                                                      jnp.dtype(dtype)))
            for kind, dtype, scale in (("b", "float16", 0.0), ("w", "float16", 0.05),
                                       ("w", "bfloat16", 0.05))}


def _jitted_steps(transformations: dict):
    """One jitted step of every transformation of ``transformations`` (name -> transformation)
    on its own parameters: ``(grads, states, params) -> (params, states)``, the last two dicts
    by name (one compile for all)."""
    @jax.jit
    def step(grads, states, params):
        out = {n: tx.update(grads, states[n], params[n]) for n, tx in transformations.items()}
        return ({n: optax.apply_updates(params[n], u) for n, (u, _) in out.items()},
                {n: state for n, (_, state) in out.items()})

    return step


def test_half_precision_steps_are_the_float32_spec_steps_rounded():
    """float16/bfloat16 parameters, zero-initialised biases and tiny gradients (1e-4: float16
    underflows (1 - beta2) g^2 and (1 - beta3) |p g|, and its eps^2 = 0 makes a zero Ibar's
    r = 0/0), for the three SAGE transformations. Each jitted step is the spec's float32 step on
    the same inputs, with the new parameter rounded to the dtype: optax adds the update
    ``round(p) - p0`` in the dtype, so ``got`` is within (eps/2)(2|p| + |p - p0|) of the spec's
    ``p`` (three roundings; one, when the step is small next to p0), checked as
    eps (|p| + |p - p0|). The float32 state agrees normwise to 2e-5 (jax fuses multiply-adds, so
    an EMA that cancels differs in its last digits). The zero biases stay 0 (r = 0 while p = 0);
    after 5 steps the parameters are within 5 eps of the spec's own float32 run, normwise (the
    roundings of a step add up to eps max|p|)."""
    start = _half_params(7)
    fi = {k: jnp.finfo(p.dtype) for k, p in start.items()}
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    txs = {preset: factory(lr=1e-3) for preset, factory in SAGE_FACTORIES.items()}
    rules = {preset: spec.make(preset, lr=1e-3) for preset in txs}
    step = _jitted_steps(txs)
    params = {preset: start for preset in txs}
    states = {preset: tx.init(start) for preset, tx in txs.items()}
    for state in states.values():
        assert {a.dtype for a in jax.tree.leaves(state._replace(step=None))} == {
            np.dtype("float32")}
    runs = {preset: {k: (f32(p), rule.init(f32(p))) for k, p in start.items()}
            for preset, rule in rules.items()}
    rng = np.random.default_rng(8)
    worst = {preset: 0.0 for preset in txs}
    for _ in range(5):
        grads = {k: jnp.asarray(np.asarray(1e-4 * rng.standard_normal(p.shape), p.dtype))
                 for k, p in start.items()}
        expected = {preset: {k: rule.step(f32(params[preset][k]), f32(grads[k]),
                                          _leaf_state(states[preset], k)) for k in start}
                    for preset, rule in rules.items()}
        before = params
        params, states = step(grads, states, params)
        for preset, rule in rules.items():
            for k, (p, st, _) in expected[preset].items():
                got, p0 = f32(params[preset][k]), f32(before[preset][k])
                assert params[preset][k].dtype == start[k].dtype and np.isfinite(got).all()
                allowed = fi[k].eps * (np.abs(p) + np.abs(p - p0)) + fi[k].smallest_subnormal
                worst[preset] = max(worst[preset], np.max(np.abs(got - p) / allowed))
                for name, value in _leaf_state(states[preset], k).items():
                    if name != "step":
                        assert np.abs(value - st[name]).max() <= 2e-5 * np.abs(st[name]).max()
                run = runs[preset]
                run[k] = rule.step(run[k][0], f32(grads[k]), run[k][1])[:2]
    for preset in txs:
        assert worst[preset] <= 1, preset
        for k, p in params[preset].items():
            expected = runs[preset][k][0]
            if k.startswith("b."):
                assert np.all(f32(p) == 0) and np.all(expected == 0), (preset, k)
            else:
                assert (np.abs(f32(p) - expected).max()
                        <= 5 * fi[k].eps * np.abs(expected).max()), (preset, k)


def test_schedules_and_inject_hyperparams():
    """Under one jit, four steps of each SAGE transformation with: an optax schedule as ``lr``;
    ``optax.inject_hyperparams`` with ``lr`` changed in the state after two steps;
    inject_hyperparams with a schedule; the official schedule with ``t_total`` injected
    (traced); ``lr_schedule``. Each equals the spec rule to 1e-12 (float64): the first three with
    that step's lr as the rule's ``lr`` (the AdamW pair's decay uses it too, as with a torch lr
    scheduler), ``lr_schedule`` as ``step(lr=...)`` with the base lr kept for the decay."""
    wd = 0.1
    sched = optax.cosine_decay_schedule(1e-2, 4)  # float64 under x64: the same in and out of jit
    lrs = [float(sched(jnp.asarray(k, jnp.int32))) for k in range(4)]
    official = {"t_total": 4, "warmup": 0.25}
    txs, plans = {}, {}  # (preset, variant) -> transformation; -> [(rule's lr, step's lr)] per step
    for preset, factory in SAGE_FACTORIES.items():
        inject = optax.inject_hyperparams(factory)
        variants = {
            "lr=schedule": (factory(lr=sched, weight_decay=wd), [(lr, None) for lr in lrs]),
            "inject": (inject(lr=1e-2, weight_decay=wd), [(1e-2, None)] * 2 + [(2e-3, None)] * 2),
            "inject(schedule)": (inject(lr=sched, weight_decay=wd), [(lr, None) for lr in lrs]),
            "lr_schedule": (factory(lr=1e-2, weight_decay=wd, lr_schedule=sched),
                            [(1e-2, lr) for lr in lrs])}
        if preset != "adam-sage":
            variants["inject(t_total)"] = (inject(lr=1e-2, weight_decay=wd, **official),
                                           [(1e-2, None)] * 4)
        for variant, (tx, plan) in variants.items():
            txs[preset, variant], plans[preset, variant] = tx, plan
    step = _jitted_steps(txs)
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal((3, 4))
    params = {n: {"w": jnp.asarray(p0)} for n in txs}
    states = {n: tx.init(params[n]) for n, tx in txs.items()}
    ref = {n: (p0, spec.make(n[0], lr=1.0).init(p0)) for n in txs}
    for k in range(4):
        if k == 2:
            for preset in SAGE_FACTORIES:
                states[preset, "inject"].hyperparams["lr"] = jnp.asarray(2e-3, jnp.float64)
        g = rng.standard_normal((3, 4))
        params, states = step({"w": jnp.asarray(g)}, states, params)
        for n, plan in plans.items():
            base, lr_t = plan[k]
            rule = spec.make(n[0], lr=base, weight_decay=wd,
                             **(official if n[1] == "inject(t_total)" else {}))
            ref[n] = rule.step(ref[n][0], g, ref[n][1], lr=lr_t)[:2]
    for n in txs:
        np.testing.assert_allclose(np.asarray(params[n]["w"]), ref[n][0], rtol=1e-12,
                                   err_msg=str(n))
    # the two lr semantics differ, in adamw-sage's decay only
    a, b = (ref["adamw-sage", v][0] for v in ("lr=schedule", "lr_schedule"))
    assert np.abs(a - b).max() > 1e-4


def test_schedule_conflicts_and_half_precision_hyperparameters():
    """Two schedules at once are refused, naming both; a non-lr callable is refused; the
    hyperparameters optax.inject_hyperparams casts to float16 parameters get one warning naming
    them (and none with hyperparam_dtype=jnp.float32)."""
    sched = optax.constant_schedule(0.1)
    with pytest.raises(ValueError, match="t_total=10"):
        bj.adamw_sage(lr=sched, t_total=10)
    with pytest.raises(ValueError, match="lr or lr_schedule, not both"):
        bj.adam_sage(lr=sched, lr_schedule=sched)
    with pytest.raises(ValueError, match="beta3 must be a number"):
        bj.adamax_sage(lr=0.1, beta3=sched)
    half = {"w": jnp.zeros(3, jnp.float16)}
    with pytest.warns(UserWarning, match="lr, beta3, eps, weight_decay, max_grad_norm arrived"):
        optax.inject_hyperparams(bj.adamw_sage)(lr=1e-3).init(half)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optax.inject_hyperparams(bj.adamw_sage, hyperparam_dtype=jnp.float32)(lr=1e-3).init(half)


def _judgeable_with_flush_to_zero(drawn) -> bool:
    """Whether a drawn case can be judged on a backend that flushes subnormal numbers to zero.

    XLA on CPU does (FTZ/DAZ): it moves a result by less than the smallest normal number
    ``tiny``, so an entry whose bound ``k * S`` (:func:`minisage.testing.check_drawn`) is below
    ``tiny`` cannot be judged there. Drawn float32 cases reach it when a huge gradient's norm
    clips a tiny entry (then ``(g c)^2`` is subnormal); float64 ones never do.
    """
    k, _ = testing.error_room(drawn.case.dtype, max(drawn.case.param.size, 1))
    tiny = np.finfo(drawn.case.dtype).tiny
    return all(np.all((s == 0) | (k * s >= tiny)) for scales in drawn.scales
               for s in scales.values())


@pytest.mark.parametrize("preset", list(SAGE_FACTORIES))
def test_drawn_cases(preset):
    """The three SAGE transformations on the cases minisage.testing draws beyond the golden ones
    (every hyperparameter over its range, float64 and float32, 0-d and empty shapes, zero, tiny,
    huge and mixed gradients, schedules), each entry within the bound the helper derives from the
    arithmetic; cases only a gradual-underflow backend can be judged on are left out. A third of
    the profile's examples (10 in CI) and shapes of up to 3 entries: every new shape or dtype
    costs jax a compile of each operation of an eager step."""
    from hypothesis import assume, given, settings

    @settings(max_examples=max(1, settings.default.max_examples // 3))
    @given(testing.drawn_cases(preset, max_size=3))
    def check(drawn):
        assume(_judgeable_with_flush_to_zero(drawn))
        testing.check_drawn(fn, drawn)

    fn = {p: f for _, p, f in FUNCTIONS}[preset]

    check()


def _tree(names: list[str]) -> dict:
    """A nested dict with a leaf (a 1-entry array) at each dotted name."""
    root: dict = {}
    for name in names:
        *path, last = name.split(".")
        node = root
        for key in path:
            node = node.setdefault(key, {})
        node[last] = np.zeros(1)
    return root


# Parameter names of one block of flax models, written out from the modules' sources: flax.linen's
# MultiHeadDotProductAttention (Dense layers query, key, value, out) and MlpBlock as in flax's
# examples, auto-named and named; transformers' Flax BERT, DistilBERT, GPT-2, LLaMA and ViT
# (transformers 4.x; Flax was removed in 5.x). Each family: (all names, the names that get SAGE).
_LINEN = "params.layers_0."
FLAX_NAMES = {
    "flax": (["params.Embed_0.embedding", f"{_LINEN}LayerNorm_0.scale",
              f"{_LINEN}LayerNorm_0.bias", "params.head.kernel", "params.head.bias"],
             [f"{_LINEN}MultiHeadDotProductAttention_0.{d}.{w}"
              for d in ("query", "key", "value", "out") for w in ("kernel", "bias")]
             + [f"{_LINEN}MlpBlock_0.Dense_{i}.{w}" for i in (0, 1) for w in ("kernel", "bias")]
             + [f"params.layers_1.attention.{d}.kernel" for d in ("query", "key", "value", "out")]
             + ["params.layers_1.mlp.Dense_0.kernel", "params.layers_1.mlp.Dense_1.kernel"]),
    "bert": (["bert.embeddings.word_embeddings.embedding", "bert.embeddings.LayerNorm.scale",
              "bert.encoder.layer.0.attention.output.LayerNorm.scale",
              "bert.encoder.layer.0.output.LayerNorm.bias", "bert.pooler.dense.kernel"],
             [f"bert.encoder.layer.0.{m}.kernel" for m in (
                 "attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense")]),
    "distilbert": (["distilbert.embeddings.word_embeddings.embedding",
                    "distilbert.transformer.layer.0.sa_layer_norm.scale",
                    "distilbert.transformer.layer.0.output_layer_norm.bias"],
                   [f"distilbert.transformer.layer.0.{m}.kernel" for m in (
                       "attention.q_lin", "attention.k_lin", "attention.v_lin",
                       "attention.out_lin", "ffn.lin1", "ffn.lin2")]),
    "gpt2": (["transformer.wte.embedding", "transformer.wpe.embedding",
              "transformer.h.0.ln_1.scale", "transformer.ln_f.bias"],
             [f"transformer.h.0.{m}.{w}" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                   "mlp.c_proj") for w in ("kernel", "bias")]),
    "llama": (["model.embed_tokens.embedding", "model.layers.0.input_layernorm.weight",
               "model.norm.weight", "lm_head.kernel"],
              [f"model.layers.0.{m}.kernel" for m in (
                  "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]),
    # Flax ViT names its query/key/value attention.attention.*: "bert" alone misses them
    "all": (["vit.embeddings.cls_token", "vit.encoder.layer.0.layernorm_before.scale",
             "vit.layernorm.bias", "classifier.kernel"],
            [f"vit.encoder.layer.0.{m}.kernel" for m in (
                "attention.attention.query", "attention.attention.key",
                "attention.attention.value", "attention.output.dense", "intermediate.dense",
                "output.dense")]),
}


@pytest.mark.parametrize("family", list(FLAX_NAMES))
def test_pattern_sets_select_attention_and_feed_forward_of_flax_models(family):
    """sage_labels with a named pattern set gives SAGE to exactly the attention and feed-forward
    leaves of a flax params tree (dotted paths), with no warning; the decay split of the
    flax.linen block: kernels and embeddings decay, biases and LayerNorms do not."""
    plain, sage = FLAX_NAMES[family]
    tree = _tree(plain + sage)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = bj.sage_labels(tree, sage_patterns=family, on_no_sage="raise")
    names, got = jax.tree.leaves(bj.labels.leaf_names(tree)), jax.tree.leaves(labels)
    assert sorted(n for n, label in zip(names, got) if label.startswith("sage/")) == sorted(sage)
    if family == "flax":
        decay = {n: label.endswith("/decay") for n, label in zip(names, got)}
        assert {n for n, d in decay.items() if d} == {
            n for n in names if n.endswith(("kernel", "embedding"))}
    if family == "all":  # the official (BERT) set gives Flax ViT's attention.output and FFN only
        bert = bj.sage_labels(tree)
        assert sum(label.startswith("sage/") for label in jax.tree.leaves(bert)) == 3


def test_a_split_that_selects_nothing_warns_or_refuses():
    """flax.linen names under the official (BERT) patterns select nothing: sage_labels and
    official_sage warn, naming the patterns, a few parameter names and the set that fits (so an
    adamw_sage run can no longer silently equal bert-adamw); on_no_sage="raise" refuses, and a
    sage_select function replaces the patterns."""
    plain, sage = FLAX_NAMES["flax"]
    tree = _tree(plain + sage)
    with pytest.warns(split.NoSageWarning) as record:
        labels = bj.sage_labels(tree)
    message = str(record[0].message)
    assert "sage_patterns ('attention.self'" in message and "'params.Embed_0.embedding'" in message
    assert f"'flax' ({len(sage)})" in message
    assert not any(label.startswith("sage/") for label in jax.tree.leaves(labels))
    with pytest.warns(split.NoSageWarning):
        bj.official_sage(bj.adamw_sage, tree, lr=1e-3)
    with pytest.raises(ValueError, match="selects none of the"):
        bj.official_sage(bj.adamw_sage, tree, lr=1e-3, on_no_sage="raise")
    labels = bj.sage_labels(tree, sage_select=lambda name: "Dense_0" in name, on_no_sage="raise")
    assert sum(label.startswith("sage/") for label in jax.tree.leaves(labels)) == 3
