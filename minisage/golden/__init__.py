"""Golden vectors: trajectories of every spec preset, committed as exact JSON.

- :func:`load` reads and validates one file; :func:`load_preset` the committed file of a preset;
  :func:`cases` all committed cases (optionally of one preset / dtype).
- :mod:`minisage.golden.format` documents the format (schema version 1).
- :mod:`minisage.golden.generate` regenerates them (``minisage golden export DIR``).

Another backend checks itself against these with :mod:`minisage.testing`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from minisage.golden.format import (
    SCHEMA,
    SCHEMA_VERSION,
    GoldenCase,
    GoldenFormatError,
    GoldenStep,
    decode_state,
    encode_state,
    load,
    parse_document,
)

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"


def vectors_dir() -> Path:
    """The folder of the committed golden files."""
    return VECTORS_DIR


@cache
def load_preset(preset: str) -> tuple[GoldenCase, ...]:
    """The committed cases of ``preset`` (validated; cached; arrays are read-only)."""
    from minisage import spec

    spec.rule_class(preset)  # ValueError for an unknown preset
    return tuple(load(VECTORS_DIR / f"{preset}.json"))


def cases(preset: str | None = None, dtype: str | None = None) -> list[GoldenCase]:
    """Committed cases, of one preset (or all), of one dtype (or both)."""
    from minisage import spec

    names = spec.presets() if preset is None else (preset,)
    out = [c for name in names for c in load_preset(name)]
    if dtype is not None:
        if str(dtype) not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        out = [c for c in out if c.dtype.name == str(dtype)]
    return out


__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "GoldenCase", "GoldenStep", "GoldenFormatError", "load",
    "parse_document", "load_preset", "cases", "vectors_dir", "encode_state", "decode_state",
]
