"""Checkpoints: model, optimizer state, recorder state, history and step in one ``.npz``, no pickle.

Arrays are stored under ``model/<name>``, ``optim/<path>`` and ``recorder/<name>``; everything else
(the run's config, the step, the history, the nesting of the optimizer's state dict) is one JSON
string under ``meta``. Loading uses ``np.load(..., allow_pickle=False)`` and checks every piece,
reporting the file and the fault.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict

import numpy as np

from minisage.errors import CheckpointError

FORMAT = "minisage-checkpoint"
VERSION = 1


def _flatten(obj, prefix: str, arrays: dict):
    """Replace each ndarray in a nest of dicts/lists by {"__array__": key}, storing it in arrays."""
    if isinstance(obj, np.ndarray):
        arrays[prefix] = obj
        return {"__array__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}/k{i}", arrays),
                              _flatten(v, f"{prefix}/{i}", arrays)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unflatten(obj, arrays):
    if isinstance(obj, dict) and "__array__" in obj:
        return arrays[obj["__array__"]].copy()
    if isinstance(obj, dict) and "__dict__" in obj:
        return {_unflatten(k, arrays): _unflatten(v, arrays) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def save(path, config, model, optimizer, recorder, history, step: int) -> None:
    """Write everything needed to continue the run bit for bit after ``step``."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in model.state_dict().items():
        arrays[f"model/{name}"] = value
    meta = {
        "format": FORMAT, "version": VERSION, "step": step, "config": asdict(config),
        "history": history,
        "optimizer": _flatten(optimizer.state_dict(), "optim", arrays) if optimizer else None,
        "recorder": None,
        "dropout_rng": model.rng.bit_generator.state,
    }
    if recorder is not None:
        meta["recorder"] = {"rows": recorder.rows, "names": list(recorder.sensitivity_ema),
                            "histograms": _flatten(recorder.histograms, "hist", arrays)}
        for i, value in enumerate(recorder.sensitivity_ema.values()):
            arrays[f"recorder/{i}"] = value
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:  # np.savez would append .npz to a path without it
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def load(path) -> dict:
    """Read and validate a checkpoint; returns {"config", "step", "meta", "arrays"}."""
    from minisage.train import TrainConfig

    with open(path, "rb") as f:  # FileNotFoundError propagates with the path in it
        if f.read(4) != b"PK\x03\x04":
            raise CheckpointError(f"{path}: not a .npz checkpoint (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({err})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: no 'meta' entry; not a minisage checkpoint")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: 'meta' is not valid JSON ({err})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} version "
                              f"{meta.get('version')!r}, expected {FORMAT!r} version {VERSION}")
    try:
        config = TrainConfig(**meta["config"])
        step = int(meta["step"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad config or step ({err})") from None
    return {"path": str(path), "config": config, "step": step, "meta": meta, "arrays": arrays}


def restore(checkpoint: dict, model, optimizer, recorder, history: list) -> int:
    """Put a loaded checkpoint's state into a freshly built model/optimizer/recorder; returns
    the step it was saved at. A mismatch raises CheckpointError naming the file."""
    path, meta, arrays = checkpoint["path"], checkpoint["meta"], checkpoint["arrays"]
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    try:
        model.load_state_dict(model_state)
        if meta["optimizer"] is not None:
            optimizer.load_state_dict(_unflatten(meta["optimizer"], arrays))
        model.rng.bit_generator.state = meta["dropout_rng"]
        if recorder is not None and meta["recorder"] is not None:
            saved = meta["recorder"]
            recorder.rows[:] = saved["rows"]
            recorder.sensitivity_ema.clear()
            for i, name in enumerate(saved["names"]):
                recorder.sensitivity_ema[name] = arrays[f"recorder/{i}"]
            histograms = _unflatten(saved["histograms"], arrays)
            recorder.histograms.clear()
            recorder.histograms.update({int(k): v for k, v in histograms.items()})
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: does not match this model/optimizer ({err})") from None
    history[:] = meta["history"]
    return checkpoint["step"]
