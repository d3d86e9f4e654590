"""minisage bench in a tiny mode: the structure of its result, table and JSON, and the invariants
that hold whatever the timings (state arrays and bytes per parameter, same weights on both sides).
Never a timing assertion."""

import json

import numpy as np
import pytest

from minisage import bench
from minisage.cli import main

TINY = {"shapes": (bench.TINY,), "optimizer_shape": bench.TINY, "reps": 2, "warmup": 1}


def _check_structure(result, dtype, with_torch, reps=2):
    assert set(result) == {"environment", "train", "optimizer", "ceiling", "targets"}
    env = result["environment"]
    assert env["dtype"] == dtype and env["threads"] >= 1 and env["reps"] == reps
    assert ("torch" in env) == with_torch
    (train,) = result["train"]
    assert train["shape"] == "tiny" and train["minisage_ms"] > 0 and train["peak_mb"] > 0
    assert train["matmul_gflop"] == bench.TINY.matmul_flops() / 1e9
    assert [row["preset"] for row in result["optimizer"]] == list(bench.OPTIMIZERS)
    size = np.dtype(dtype).itemsize
    for row in result["optimizer"]:
        arrays = 2 if row["preset"] == "adam" else 3      # m, v (Adam); m, v or u, Ibar (SAGE)
        assert row["state_arrays_per_param"] == [arrays]
        assert row["state_bytes_per_param"] == arrays * size
        assert row["minisage_ms"] > 0 and ("ratio" in row) == with_torch
    assert result["ceiling"]["numpy_gflops"] > 0
    targets = {t["target"]: t for t in result["targets"]}
    assert targets["adamw-sage state arrays per parameter"]["met"] is True
    assert targets["adam state arrays per parameter"]["met"] is True
    assert all(t["met"] in (True, False, None) for t in targets.values())
    json.dumps(result)                                    # JSON-ready as it is


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bench_without_torch(dtype):
    result = bench.bench(dtype=dtype, with_torch=False, **TINY)
    _check_structure(result, dtype, with_torch=False)
    assert "ratio" not in result["train"][0]
    table = bench.format_table(result)
    assert "train step, tiny" in table and "optimizer step, adamw-sage" in table
    assert "targets:" in table


def test_bench_with_torch_uses_the_same_weights_and_threads():
    torch = pytest.importorskip("torch")
    result = bench.bench(with_torch=True, **TINY)
    _check_structure(result, "float32", with_torch=True)
    env = result["environment"]
    assert env["torch_threads"] == env["threads"] == torch.get_num_threads()
    row = result["train"][0]
    assert row["first_loss_diff"] <= 1e-5 and row["ratio"] > 0 and row["torch_peak_mb"] >= 0
    assert "torch" in bench.format_table(result).splitlines()[0]


def test_cli_bench_prints_the_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--no-torch", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "train step, tiny" in out and "threads: numpy BLAS" in out
    saved = json.loads(path.read_text())
    _check_structure(saved, "float32", with_torch=False, reps=3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reps must be >= 1"):
        bench.bench(reps=0, with_torch=False)
    with pytest.raises(ValueError, match="float32 or float64"):
        bench.bench(dtype="float16", with_torch=False)
    threads, source = bench.numpy_threads()
    if source != "threadpoolctl":                         # fixed at import: a clear error
        with pytest.raises(ValueError, match=f"OPENBLAS_NUM_THREADS={threads + 1}"):
            bench.numpy_threads(threads + 1)


def test_cli_threads_are_set_for_both(tmp_path):
    """--threads N: NumPy's BLAS (threadpoolctl, or a fresh process with OPENBLAS_NUM_THREADS=N)
    and torch use N."""
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--no-torch", "--threads", "2", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["environment"]["threads"] == 2
