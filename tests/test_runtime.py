"""Importing minisage leaves the process as it found it; minisage.runtime tunes it only on request.

The import checks run in fresh subprocesses (a process can import a module only once), in both
orders (NumPy first, minisage first), against a control process that never imports minisage:

- ``os.environ`` is unchanged (minisage once set ``OPENBLAS_NUM_THREADS=1`` and friends);
- every BLAS library NumPy loaded runs as many threads as in the control;
- memory is returned to the operating system: 400 MiB allocated as 1 MiB arrays and freed leaves
  the process about as large as the control (minisage once raised glibc's malloc thresholds, so
  the process kept ~400 MiB of freed memory). Only where malloc is glibc's and RSS is readable.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import minisage
from minisage import runtime

ROOT = Path(minisage.__file__).resolve().parent.parent
GLIBC = platform.libc_ver()[0] == "glibc" and Path("/proc/self/statm").exists()
ARRAYS, MIB = 400, 1 << 20  # the allocation the memory check frees again

CHILD = r"""
import json, os, pkgutil, sys
mode = sys.argv[1]
environ_before = dict(os.environ)
if mode == "minisage_first":
    import minisage
import numpy as np
modules = []
if mode in ("minisage_first", "numpy_first", "tuned"):
    import importlib
    import minisage

    def walk(package):  # every public module, without importing torch or jax
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            parts = info.name.split(".")
            if parts[-1].startswith("_") or {"torch", "jax"} & set(parts):
                continue
            module = importlib.import_module(info.name)
            modules.append(info.name)
            if info.ispkg:
                walk(module)

    walk(minisage)
from threadpoolctl import threadpool_info

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def allocate_and_free(base):
    # np.ones touches every page: each array is resident until freed
    arrays = [np.ones(MIB // 8) for _ in range(ARRAYS)]
    grown = rss() - base
    del arrays
    return grown, rss() - base

result = {
    "environ_changed": sorted(k for k in set(environ_before) | set(os.environ)
                              if environ_before.get(k) != os.environ.get(k)),
    "blas_threads": {i["filepath"]: i["num_threads"] for i in threadpool_info()
                     if i["user_api"] == "blas"},
    "modules": modules,
}
if os.path.exists("/proc/self/statm"):
    base = rss()
    if mode == "tuned":
        from minisage import runtime
        with runtime.tuned(threads=None):
            result["grown"], result["kept_inside"] = allocate_and_free(base)
        result["retained"] = rss() - base
    else:
        result["grown"], result["retained"] = allocate_and_free(base)
print(json.dumps(result))
""".replace("MIB", str(MIB)).replace("ARRAYS", str(ARRAYS))


def _child(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           # BLAS libraries read these at load time: let them choose their defaults, as the
           # import once did not (it set them to 1 when minisage came first)
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + env.get("PYTHONPATH", "").split(os.pathsep))
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def control():
    return _child("control")


@pytest.mark.parametrize("order", ["numpy_first", "minisage_first"])
def test_importing_minisage_changes_nothing_in_the_process(order, control):
    child = _child(order)
    assert {"minisage.autograd", "minisage.functional", "minisage.nn", "minisage.spec",
            "minisage.runtime"} <= set(child["modules"])
    assert child["environ_changed"] == []
    shared = set(child["blas_threads"]) & set(control["blas_threads"])
    assert shared, "NumPy's BLAS library was not found by threadpoolctl"
    for library in shared:
        assert child["blas_threads"][library] == control["blas_threads"][library], library
    if not GLIBC:
        pytest.skip("the memory check needs glibc's malloc and /proc/self/statm")
    # Both processes really held the arrays, and the freed memory went back to the system: the
    # control keeps a few tens of MiB at most, an import that kept freed memory kept ~400 MiB.
    assert child["grown"] >= 0.9 * ARRAYS * MIB and control["grown"] >= 0.9 * ARRAYS * MIB
    assert child["retained"] <= control["retained"] + ARRAYS * MIB // 4


@pytest.mark.skipif(not GLIBC, reason="needs glibc's malloc and /proc/self/statm")
def test_tuned_keeps_freed_memory_inside_the_block_and_returns_it_after():
    child = _child("tuned")
    assert child["grown"] >= 0.9 * ARRAYS * MIB
    assert child["kept_inside"] >= 0.9 * ARRAYS * MIB  # freed, but kept for reuse
    assert child["retained"] <= ARRAYS * MIB // 4  # malloc_trim on exit gave it back


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_tuned_sets_one_blas_thread_and_restores_the_count():
    if not _blas_threads():
        pytest.skip("threadpoolctl finds no BLAS library to limit")
    with threadpool_limits(2, user_api="blas"):  # a count that differs from the block's
        before = _blas_threads()
        assert before and all(n == 2 for n in before)
        with runtime.tuned(keep_memory=False):
            assert all(n == 1 for n in _blas_threads())
        assert _blas_threads() == before
        with pytest.raises(RuntimeError, match="inside"):  # restored on an error as well
            with runtime.tuned(threads=3, keep_memory=False):
                assert all(n == 3 for n in _blas_threads())
                raise RuntimeError("inside")
        assert _blas_threads() == before


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_tuned_rejects_a_bad_thread_count_by_name(threads):
    before = _blas_threads()
    with pytest.raises(ValueError, match=r"threads must be an integer >= 1 or None"):
        with runtime.tuned(threads=threads):
            pass
    assert _blas_threads() == before


def test_keep_freed_memory_yields_false_off_glibc(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with runtime.keep_freed_memory() as kept:
        assert kept is False
    monkeypatch.setattr(sys, "platform", "linux")

    def no_glibc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(runtime.ctypes, "CDLL", no_glibc)
    with runtime.keep_freed_memory() as kept:
        assert kept is False


@pytest.mark.skipif(not GLIBC, reason="needs glibc's malloc")
def test_keep_freed_memory_yields_true_on_glibc():
    with runtime.keep_freed_memory() as kept:
        assert kept is True
