"""The errors minisage raises on purpose, so that a caller (the command line above all) can tell a
user's mistake from a bug.

Each is also a ``ValueError``, so code that catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class MinisageError(Exception):
    """Base class of minisage's own errors."""


class UsageError(MinisageError, ValueError):
    """A value the user gave is not allowed; the message names it and the allowed range."""


class CheckpointError(MinisageError, ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fault."""


class GoldenFormatError(MinisageError, ValueError):
    """A golden file is malformed; the message names the file and what is wrong where."""
