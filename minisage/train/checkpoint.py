"""Checkpoints: the pieces of a run in one ``.npz``, without pickle.

This module knows nothing of training: it stores what it is given (a :class:`Checkpoint`) and
gives it back, checked. The loop (:mod:`minisage.train.loop`) decides what the pieces are and how
they go back into a model, an optimizer and a recorder.

On disk, every ndarray of the pieces is its own entry (``model/<name>``, and ``optimizer/...``,
``recorder/...`` for arrays inside those nests); everything else (the config, the step, the
history, the nesting of the optimizer's and the recorder's state, the random generator's state,
the stage) is one JSON string under ``meta``, the arrays replaced by references to their entries.
Saving writes a temporary file beside the target and renames it when complete
(:func:`minisage.files.write_atomic`), so that an interrupted save never leaves a partial file or
spoils an older checkpoint of the same name. Loading uses ``np.load(..., allow_pickle=False)`` and
checks every piece; a fault raises :class:`~minisage.errors.CheckpointError` naming the file and
the fault.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minisage.errors import CheckpointError
from minisage.files import write_atomic

FORMAT = "minisage-checkpoint"
VERSION = 2  # 2: the recorder's state is a nest like the optimizer's (1 kept it in its own keys)
#: what a checkpoint holds: a run ("train"), or the pretraining stage before it ("pretrain")
STAGES = ("train", "pretrain")


@dataclass
class Checkpoint:
    """The pieces of a run at the end of ``step``.

    ``config``: a plain dict (JSON types); ``model``: ``{name: ndarray}`` (a ``state_dict``);
    ``optimizer`` and ``recorder``: nests of dicts, lists, ndarrays and JSON values (a
    ``state_dict``), or None; ``history``: JSON rows; ``rng``: a random generator's
    ``bit_generator.state`` (or None). ``stage``: ``"train"`` (the pieces are the run's) or
    ``"pretrain"`` (they are its pretraining stage's; ``config`` is still the run's). ``path``:
    the file it was loaded from ("" if none).
    """

    config: dict[str, Any]
    step: int
    model: dict[str, np.ndarray]
    optimizer: Any = None
    recorder: Any = None
    history: list[dict] = field(default_factory=list)
    rng: dict | None = None
    stage: str = "train"
    path: str = ""


def _flatten(obj, prefix: str, arrays: dict[str, np.ndarray]):
    """Replace each ndarray in a nest of dicts/lists by {"__array__": key}, storing it in arrays;
    a dict becomes {"__dict__": [[key, value], ...]} so that non-string keys survive JSON."""
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


def _unflatten(obj, arrays: dict[str, np.ndarray]):
    """The inverse of :func:`_flatten`; KeyError for a reference to a missing array."""
    if isinstance(obj, dict) and "__array__" in obj:
        return arrays[obj["__array__"]].copy()
    if isinstance(obj, dict) and "__dict__" in obj:
        return {_unflatten(k, arrays): _unflatten(v, arrays) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def save(path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` (exactly that name; folders are created), whole or not at
    all."""
    if checkpoint.stage not in STAGES:
        raise ValueError(f"checkpoint stage must be one of {', '.join(STAGES)}, got "
                         f"{checkpoint.stage!r}")
    arrays: dict[str, np.ndarray] = {}
    for name, value in checkpoint.model.items():
        arrays[f"model/{name}"] = np.asarray(value)
    meta = {
        "format": FORMAT, "version": VERSION, "step": int(checkpoint.step),
        "config": checkpoint.config, "history": checkpoint.history,
        "optimizer": _flatten(checkpoint.optimizer, "optimizer", arrays),
        "recorder": _flatten(checkpoint.recorder, "recorder", arrays),
        "rng": checkpoint.rng, "stage": checkpoint.stage,
    }
    with write_atomic(path) as f:  # (np.savez given a name would append .npz to it)
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def load(path) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save`.

    A missing or unreadable file raises the OSError of ``open`` (with the path in it); a file
    that is not such a checkpoint raises CheckpointError naming the file and the fault.
    """
    with open(path, "rb") as f:
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        found = meta if not isinstance(meta, dict) else (meta.get("format"), meta.get("version"))
        raise CheckpointError(f"{path}: format and version {found!r}, expected "
                              f"{(FORMAT, VERSION)!r}")
    for key, kind in (("config", dict), ("step", int), ("history", list)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CheckpointError(f"{path}: '{key}' must be of type {kind.__name__}, got "
                                  f"{type(meta.get(key)).__name__}")
    if meta["step"] < 0:
        raise CheckpointError(f"{path}: 'step' must be >= 0, got {meta['step']}")
    if meta.get("rng") is not None and not isinstance(meta["rng"], dict):
        raise CheckpointError(f"{path}: 'rng' must be a dict or null")
    stage = meta.get("stage", "train")
    if stage not in STAGES:
        raise CheckpointError(f"{path}: 'stage' must be one of {', '.join(STAGES)}, got "
                              f"{stage!r}")
    try:
        optimizer = _unflatten(meta.get("optimizer"), arrays)
        recorder = _unflatten(meta.get("recorder"), arrays)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the optimizer or recorder state refers to a missing "
                              f"or malformed entry ({err})") from None
    model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    return Checkpoint(config=meta["config"], step=meta["step"], model=model,
                      optimizer=optimizer, recorder=recorder, history=meta["history"],
                      rng=meta.get("rng"), stage=stage, path=str(path))
