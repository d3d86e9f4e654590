"""Checkpoints on their own, without training: every piece comes back exactly, every fault is a
CheckpointError naming the file, files are read without pickle, and the module imports nothing
of training."""

import ast
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from minisage.errors import CheckpointError
from minisage.train import checkpoint
from minisage.train.checkpoint import Checkpoint


def _example() -> Checkpoint:
    rng = np.random.default_rng(0)
    return Checkpoint(
        config={"task": "sort", "lr": 0.001, "steps": 7},
        step=5,
        model={"w": rng.standard_normal((3, 4)), "b": np.zeros(4, dtype=np.float32)},
        # an optimizer state_dict: integer keys, arrays of two dtypes, nested lists
        optimizer={"state": {0: {"step": 5, "exp_avg": rng.standard_normal((3, 4))},
                             1: {"step": 5, "exp_avg": np.ones(4, dtype=np.float32)}},
                   "param_groups": [{"params": [0, 1], "lr": 0.001, "betas": [0.9, 0.999],
                                     "sage": True}]},
        recorder={"rows": [{"step": 5, "q50": 0.25}],
                  "histograms": {5: {"lr_multiplier": np.arange(3.0)}}},
        history=[{"step": 5, "val_loss": 1.25, "gap": float("nan")}],
        rng=np.random.default_rng(1).bit_generator.state,
    )


def _assert_same(a, b):
    """Equal nests, arrays equal in value, dtype and shape."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b and type(a) is type(b)


def test_round_trip_gives_back_every_piece_exactly(tmp_path):
    original = _example()
    path = tmp_path / "sub" / "run.ckpt"  # any name, folders created
    checkpoint.save(path, original)
    loaded = checkpoint.load(path)
    assert loaded.path == str(path) and loaded.step == 5
    for piece in ("config", "model", "optimizer", "recorder", "history", "rng"):
        _assert_same(getattr(original, piece), getattr(loaded, piece))
    # the random generator continues where it was
    generator = np.random.default_rng()
    generator.bit_generator.state = loaded.rng
    np.testing.assert_array_equal(generator.random(3), np.random.default_rng(1).random(3))


def test_empty_pieces_round_trip(tmp_path):
    path = tmp_path / "empty.npz"
    checkpoint.save(path, Checkpoint(config={}, step=0, model={}))
    loaded = checkpoint.load(path)
    assert (loaded.optimizer, loaded.recorder, loaded.history, loaded.rng) == (None, None, [], None)


def _npz(path: Path, meta=None, **arrays):
    entries = dict(arrays)
    if meta is not None:
        entries["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **entries)
    return path


def _meta(**changes):
    meta = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "step": 1,
            "config": {}, "history": [], "optimizer": None, "recorder": None, "rng": None}
    return {**meta, **changes}


@pytest.mark.parametrize("make, fault", [
    (lambda p: p.write_bytes(b"not a zip file") and p, "not a zip archive"),
    (lambda p: _npz(p, None, w=np.zeros(2)), "no 'meta' entry"),
    (lambda p: _npz(p, "{not json"), "not valid JSON"),
    (lambda p: _npz(p, _meta(version=1)), "expected"),
    (lambda p: _npz(p, _meta(format="other")), "expected"),
    (lambda p: _npz(p, _meta(step=-1)), "'step' must be >= 0"),
    (lambda p: _npz(p, _meta(step="3")), "'step' must be of type int"),
    (lambda p: _npz(p, _meta(config=[1])), "'config' must be of type dict"),
    (lambda p: _npz(p, _meta(history={})), "'history' must be of type list"),
    (lambda p: _npz(p, _meta(optimizer={"__array__": "optimizer/missing"})), "missing"),
    (lambda p: _npz(p, _meta(), **{"model/w": np.array([{"a": 1}], dtype=object)}),
     "not a readable"),
])
def test_every_fault_is_a_checkpoint_error_naming_the_file(tmp_path, make, fault):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(CheckpointError, match=fault) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


def test_a_truncated_archive_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "cut.npz"
    checkpoint.save(path, _example())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.npz"):
        checkpoint.load(path)


def test_missing_files_and_folders_raise_the_oserror_of_open(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        checkpoint.load(tmp_path / "nothing.npz")
    with pytest.raises(IsADirectoryError):
        checkpoint.load(tmp_path)


def test_nothing_is_unpickled(tmp_path):
    """An object array (which only pickle can read) is refused, not executed."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    path = tmp_path / "pickled.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.npy", buffer.getvalue())
    with pytest.raises(CheckpointError, match="pickled.npz"):
        checkpoint.load(path)


def test_the_checkpoint_module_imports_nothing_of_training():
    source = Path(checkpoint.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    minisage_modules = {name for name in imported if name.split(".")[0] == "minisage"}
    assert minisage_modules == {"minisage.errors", "minisage.files"}


def test_the_stage_round_trips_and_a_bad_one_is_refused(tmp_path):
    path = tmp_path / "pre.npz"
    checkpoint.save(path, Checkpoint(config={}, step=3, model={}, stage="pretrain"))
    assert checkpoint.load(path).stage == "pretrain"
    with pytest.raises(ValueError, match="checkpoint stage must be one of train, pretrain, got "
                                         "'warmup'"):
        checkpoint.save(path, Checkpoint(config={}, step=3, model={}, stage="warmup"))
    assert checkpoint.load(path).stage == "pretrain"  # the refused save wrote nothing
    _npz(path, _meta(stage="warmup"))
    with pytest.raises(CheckpointError, match="pre.npz: 'stage' must be one of train, pretrain, "
                                              "got 'warmup'"):
        checkpoint.load(path)


def test_a_failed_save_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    checkpoint.save(path, _example())
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, _example())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]
