"""minisage bench in a tiny mode: the structure of its result, table and JSON, the invariants
that hold whatever the timings (state arrays and bytes per parameter, same weights on both sides),
the report's targets, and the thread count. Never a timing assertion."""

import json

import numpy as np
import pytest

from minisage import bench
from minisage.cli import main
from minisage.cli.bench import TARGETS, check_targets, format_targets, target

TINY = {"shapes": (bench.TINY,), "optimizer_shape": bench.TINY, "reps": 2, "warmup": 1}


def _check_structure(result, dtype, with_torch, reps=2):
    assert set(result) == {"environment", "train", "optimizer", "ceiling"}  # numbers only
    env = result["environment"]
    assert env["dtype"] == dtype and env["threads"] >= 1 and env["reps"] == reps
    assert ("torch" in env) == with_torch
    (train,) = result["train"]
    assert train["shape"] == "tiny" and train["minisage_ms"] > 0 and train["peak_mb"] > 0
    assert train["matmul_gflop"] == bench.TINY.matmul_flops() / 1e9
    assert [row["preset"] for row in result["optimizer"]] == list(bench.OPTIMIZERS)
    size = np.dtype(dtype).itemsize
    for row in result["optimizer"]:
        arrays = 2 if row["preset"] == "adamw" else 3     # m, v (AdamW); m, v or u, Ibar (SAGE)
        assert row["state_arrays_per_param"] == [arrays]
        assert row["state_bytes_per_param"] == arrays * size
        assert row["minisage_ms"] > 0 and ("ratio" in row) == with_torch
        # AdamW is timed against torch's fused AdamW as well, the others are not
        assert ("fused_ratio" in row) == (with_torch and row["preset"] == "adamw")
    assert result["optimizer"][0]["over_adamw"] == 1.0       # AdamW over itself
    assert result["ceiling"]["numpy_gflops"] > 0
    targets = {t["target"]: t for t in check_targets(result)}
    assert targets["adamw-sage state arrays per parameter"]["met"] is True
    assert targets["adamw state arrays per parameter"]["met"] is True
    json.dumps(result, allow_nan=False)                   # JSON-ready as it is


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bench_without_torch(dtype):
    result = bench.bench(dtype=dtype, with_torch=False, **TINY)
    _check_structure(result, dtype, with_torch=False)
    assert "ratio" not in result["train"][0]
    table = bench.format_table(result)
    assert "train step, tiny" in table and "optimizer step, adamw-sage" in table
    assert "target" not in table                          # the report's, not the benchmark's


def test_bench_with_torch_uses_the_same_weights_and_threads():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    result = bench.bench(with_torch=True, threads=1, **TINY)
    _check_structure(result, "float32", with_torch=True)
    env = result["environment"]
    assert env["torch_threads"] == env["threads"] == 1
    assert torch.get_num_threads() == before                  # restored after the run
    row = result["train"][0]
    assert row["first_loss_diff"] <= 1e-5 and row["ratio"] > 0 and row["torch_peak_mb"] > 0
    assert row["peak_ratio"] == row["peak_mb"] / row["torch_peak_mb"]
    table = bench.format_table(result)
    assert "torch" in table.splitlines()[0] and "against torch fused=True" in table


def test_cli_bench_prints_the_table_and_targets_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--no-torch", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "train step, tiny" in out and "threads: numpy BLAS 1" in out and "targets:" in out
    saved = json.loads(path.read_text())
    targets = saved.pop("targets")
    _check_structure(saved, "float32", with_torch=False, reps=3)
    assert targets == check_targets(saved)


def test_a_target_is_met_or_missed_as_its_bound_says():
    assert target("r", 0.7, 0.8)["met"] is True
    assert target("r", 0.8, 0.8)["met"] is True               # the bound itself is allowed
    assert target("r", 0.81, 0.8)["met"] is False
    assert target("f", 0.49, 0.5, ">=")["met"] is False
    assert target("f", 0.6, 0.5, ">=")["met"] is True
    assert target("s", [3], [3], "==")["met"] is True
    assert target("s", [2, 3], [3], "==")["met"] is False
    assert target("r", None, 0.8)["met"] is None             # no value (no torch): no verdict
    with pytest.raises(KeyError):
        target("r", 1.0, 0.8, "<")


def test_targets_of_a_given_result():
    """Numbers chosen on both sides of each bound give the verdicts the bounds say."""
    def opt_row(preset, over_adamw, arrays, **more):
        return {"preset": preset, "over_adamw": over_adamw, "state_arrays_per_param": arrays,
                **more}

    result = {
        "train": [{"shape": "lesson", "ratio": TARGETS["train_lesson"] - 0.1},
                  {"shape": "medium", "ratio": TARGETS["train_medium"] + 0.1, "gflops": 4.0,
                   "peak_ratio": TARGETS["memory_medium"] - 0.1}],
        "optimizer": [opt_row("adamw", 1.0, [2], fused_ratio=TARGETS["adamw_over_fused"] * 1.5),
                      opt_row("adamw-sage", TARGETS["sage_over_adamw"] - 0.1, [3]),
                      opt_row("adamax-sage", 1.9, [2, 3])],
        "ceiling": {"numpy_gflops": 10.0},
    }
    verdicts = {t["target"]: t["met"] for t in check_targets(result)}
    assert verdicts == {
        "train step lesson, minisage/torch": True,
        "train step medium, minisage/torch": False,
        "train step medium, peak memory minisage/torch": True,
        "adamw step / torch fused AdamW step": False,
        "adamw-sage step / minisage adamw step": True,
        "medium train step GFLOP/s / numpy matmul GFLOP/s": False,   # 0.4 < 0.5
        "adamw state arrays per parameter": True,
        "adamw-sage state arrays per parameter": True,
        "adamax-sage state arrays per parameter": False,
    }
    text = format_targets(check_targets(result))
    assert "MISSED (by 50.0%)" in text                              # the fused AdamW ratio
    del result["train"][0]["ratio"]                               # measured without torch
    first = check_targets(result)[0]
    assert first["value"] is None and first["met"] is None
    assert "n/a (no torch)" in format_targets([first])


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["--reps", "0"], "--reps must be an integer >= 1, got 0"),
    (["--json", "no-such-folder/bench.json"], "--json no-such-folder/bench.json: cannot write"),
])
def test_cli_refuses_bad_arguments_before_the_benchmark(argv, message, capsys, monkeypatch,
                                                        tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("minisage.cli.bench.bench", lambda **kw: pytest.fail("it ran"))
    assert main(["bench", "--quick", "--no-torch", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("minisage bench: error: ") and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []       # nothing left behind


def test_bad_arguments():
    with pytest.raises(ValueError, match="reps must be >= 1"):
        bench.bench(reps=0, with_torch=False)
    with pytest.raises(ValueError, match="float32 or float64"):
        bench.bench(dtype="float16", with_torch=False)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        bench.bench(threads=0, with_torch=False, **TINY)


def test_threads_are_set_for_the_run_and_restored(tmp_path):
    """--threads N: NumPy's BLAS uses N during the run (threadpoolctl) and its count before,
    after it."""
    before = bench.blas_threads()
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--no-torch", "--threads", "2", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["environment"]["threads"] == 2
    assert bench.blas_threads() == before


def test_cli_bench_times_the_torch_backend_against_torch_adamw(tmp_path, capsys):
    """With torch: the torch backend's optimizers are timed beside torch.optim.AdamW's three
    implementations, and AdamWSAGE's ratio to the default AdamW is a target."""
    pytest.importorskip("torch")
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    saved = json.loads(path.read_text())
    rows = {row["optimizer"]: row for row in saved["torch_backend"]}
    assert {"AdamWSAGE", "AdamaxSAGE", "AdamSAGE", "torch.optim.AdamW (default)",
            "torch.optim.AdamW (foreach)", "torch.optim.AdamW (fused)"} <= set(rows)
    assert rows["torch.optim.AdamW (default)"]["over_adamw_default"] == 1.0
    verdict = {t["target"]: t for t in saved["targets"]}
    sage = verdict["torch backend AdamWSAGE / torch AdamW (default) step"]
    assert sage["value"] == rows["AdamWSAGE"]["over_adamw_default"] and sage["bound"] == 2.0
    assert "torch backend AdamWSAGE" in out and "torch.optim.AdamW (fused)" in out
