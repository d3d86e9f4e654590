"""The jax/optax backend against the spec: golden cases (eager), a jitted multi-group run, the
composable ``scale_by_sage``, and float32 with x64 off. Skipped where jax or optax is missing.

float64 needs ``jax_enable_x64``: it is turned on here, before any array is made (jax's config is
process-wide; float32 arrays stay float32 with it on).
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from minisage import spec, testing  # noqa: E402
from minisage.backends import jax as bj  # noqa: E402
from minisage.cli import main  # noqa: E402

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
    argv = ["crosscheck", "--backend", "jax", "--dtype", "float32", "--preset", "adamax-sage"]
    assert main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "float32" in line]
    assert [r[0] for r in rows] == ["adamax_sage"] and rows[0][-1] == "ok"
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert main(["crosscheck", "--backend", "jax", "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "no CUDA backend" in err
    with pytest.raises(ValueError, match="beta3"):
        bj.adamw_sage(beta3=1.0)
    with pytest.raises(ValueError, match="not both"):
        bj.adamax_sage(lr=0.1, t_total=10, lr_schedule=lambda count: 0.1)
