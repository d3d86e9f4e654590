"""The jax transformations on two devices: parameters sharded over a 2-device mesh
(``NamedSharding``) give what one device gives, and the state is sharded like the parameters.

Two host devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` before jax is
imported, so the check runs in a subprocess. Skipped where jax or optax is missing.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None,
    reason="needs jax and optax")

SCRIPT = textwrap.dedent("""
    import json
    import jax
    import numpy as np
    import optax
    from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding
    jax.config.update("jax_enable_x64", True)
    from minisage.backends import jax as bj

    devices = jax.devices()
    transformations = {
        "adamw_sage": bj.adamw_sage(lr=1e-2, weight_decay=0.01),
        "adamax_sage": bj.adamax_sage(lr=1e-2),
        "adam_sage": bj.adam_sage(lr=1e-2, weight_decay=0.01),
        "scale_by_sage": optax.chain(bj.scale_by_sage(optax.scale_by_adam()), optax.scale(-1e-2)),
    }

    @jax.jit
    def init(params):
        return {name: tx.init(params) for name, tx in transformations.items()}

    @jax.jit
    def step(params, states, grads):
        new_params, new_states = {}, {}
        for name, tx in transformations.items():
            updates, new_states[name] = tx.update(grads, states[name], params[name])
            new_params[name] = optax.apply_updates(params[name], updates)
        return new_params, new_states

    rng = np.random.default_rng(0)
    p0 = {"w": rng.standard_normal((8, 4))}
    grads = [{"w": rng.standard_normal((8, 4))} for _ in range(3)]
    sharded = NamedSharding(jax.sharding.Mesh(np.array(devices), ("d",)), PartitionSpec("d"))
    runs = {}
    for layout, sharding in [("one", SingleDeviceSharding(devices[0])), ("two", sharded)]:
        p = jax.device_put(p0, sharding)
        params, states = {name: p for name in transformations}, init(p)
        for g in grads:
            params, states = step(params, states, jax.device_put(g, sharding))
        runs[layout] = params, states
    report = {"devices": len(devices), "moved": {}, "difference": {}, "state_sharded": {}}
    for name in transformations:
        one, two = (np.asarray(runs[k][0][name]["w"]) for k in ("one", "two"))
        report["moved"][name] = float(np.abs(one - p0["w"]).max())
        report["difference"][name] = float(np.abs(two - one).max() / np.abs(one).max())
        arrays = [a for a in jax.tree.leaves(runs["two"][1][name]) if a.ndim == 2]
        report["state_sharded"][name] = len(arrays) >= 1 and all(
            a.sharding.is_equivalent_to(sharded, 2) for a in arrays)
    print(json.dumps(report))
""")


def test_sharded_over_two_devices_equals_one_device():
    """Three jitted steps of every SAGE transformation with the parameter, its gradients and so
    its state sharded row-wise over two host devices equal the same steps on one device to
    1e-14 normwise (float64; the per-tensor clipping norm is summed in another order across the
    shards), and every state array keeps the parameter's sharding."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2
    names = {"adamw_sage", "adamax_sage", "adam_sage", "scale_by_sage"}
    assert set(report["difference"]) == names
    for name in names:
        assert report["moved"][name] > 1e-3, name  # the comparison is not of untouched values
        assert report["difference"][name] <= 1e-14, name
        assert report["state_sharded"][name], name
