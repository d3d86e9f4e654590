"""The core works with torch and jax unimportable, and never even tries to import them.

A fresh interpreter installs a meta-path finder that records and refuses every import of torch,
jax, jaxlib and optax, then imports every minisage module outside ``minisage.backends``, runs the
core API (Tensor, functional, spec.make + step, a Transformer forward/backward, an optim step) and
the CLI's crosscheck, which must fail with a one-line error naming the missing extra.
"""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r"""
    import importlib, io, json, pkgutil, sys
    from contextlib import redirect_stderr

    BLOCKED = {"torch", "jax", "jaxlib", "optax"}
    attempts = []

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]

    import numpy as np
    import minisage
    modules = []

    def walk(path, prefix):  # (pkgutil.walk_packages would import the backend packages)
        for info in pkgutil.iter_modules(path, prefix):
            if info.name == "minisage.__main__" or info.name.startswith("minisage.backends."):
                continue
            module = importlib.import_module(info.name)
            modules.append(info.name)
            if info.ispkg:
                walk(module.__path__, info.name + ".")

    walk(minisage.__path__, "minisage.")
    after_imports = list(attempts)

    # Tensor and functional
    from minisage import Tensor, spec
    import minisage.functional as F
    x = Tensor(np.array([[0.5, -1.0, 2.0]]), requires_grad=True)
    loss = F.cross_entropy(F.gelu(x) * 2.0, np.array([2]))
    loss.backward()
    assert x.grad.shape == (1, 3) and np.isfinite(x.grad).all()

    # the spec
    rule = spec.make("adamw-sage", lr=1e-2)
    p = np.array([0.3, -0.2, 0.0])
    state = rule.init(p)
    for g in ([0.1, 0.2, 0.3], [0.3, -0.1, 0.2]):
        p, state, trace = rule.step(p, np.array(g), state)
    assert state["step"] == 2 and set(trace) >= {"sensitivity", "lr_multiplier", "update"}

    # a Transformer forward/backward and an optim step
    from minisage.nn import Transformer, TransformerConfig
    from minisage import optim
    model = Transformer(TransformerConfig(vocab_size=7, max_len=4, d_model=8, n_layers=1,
                                          n_heads=2), seed=0)
    ids = np.array([[1, 2, 3, 4]])
    before = {n: q.data.copy() for n, q in model.named_parameters()}
    opt = optim.AdamWSAGE(optim.sage_param_groups(model.named_parameters()), lr=1e-2)
    for _ in range(2):
        model.zero_grad()
        F.cross_entropy(model.lm_logits(ids)[0], np.array([2, 3, 4, 0])).backward()
        opt.step()
    moved = [n for n, q in model.named_parameters() if not np.array_equal(q.data, before[n])]
    assert any("attention.self" in n for n in moved) and "lm_head.weight" in moved

    core_attempts = list(attempts)
    from minisage import backends
    available = [backends.available("torch"), backends.available("jax")]  # look-ups only
    del attempts[:]

    # the crosscheck command: a clear one-line error, exit status 2
    from minisage.cli import main
    err = io.StringIO()
    with redirect_stderr(err):
        status = main(["crosscheck", "--backend", "torch"])
    print(json.dumps({"modules": modules, "after_imports": after_imports,
                      "core_attempts": core_attempts, "available": available,
                      "status": status, "stderr": err.getvalue(), "attempts": attempts}))
""")


def test_core_runs_without_torch_and_jax():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"minisage.spec", "minisage.crosscheck", "minisage.cli", "minisage.testing",
            "minisage.nn.transformer", "minisage.optim"} <= set(result["modules"])
    assert result["after_imports"] == []  # no module outside backends tries torch or jax
    assert result["core_attempts"] == []
    assert result["available"] == [False, False]
    assert result["status"] == 2
    message = result["stderr"].strip()
    assert "\n" not in message and "pip install 'minisage[torch]'" in message
    assert result["attempts"] == ["torch"]
