"""Argument types shared by the commands (``type=`` of ``add_argument``)."""

from __future__ import annotations

import argparse


def path(text: str) -> str:
    """A file or folder path: any text but an empty one (which would silently mean ".")."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text
