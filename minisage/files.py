"""Files minisage writes: checked before the work that fills them, and written whole or not at all.

- :func:`check_writable`: before a long run, make sure its output file can be written (its folder
  exists, or is created, and takes a new file; the path is not a folder), so that a mistake in the
  path costs seconds, not the run.
- :func:`write_atomic`: write a file through a temporary file in the same folder, renamed over
  the target when complete; an interrupted or failed write leaves the old file (if any) as it was
  and no partial file behind.

Errors are the ``OSError`` that writing would raise, with ``filename`` set to the path the user
gave and ``strerror`` saying what is wrong.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def check_folder_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if missing and check that it takes a new file; returns it as a Path."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:  # a file where the folder should be
        raise NotADirectoryError(errno.ENOTDIR, "cannot write files here (not a folder)",
                                 str(folder)) from None
    except OSError as err:
        raise type(err)(err.errno, f"cannot write files here ({err.strerror})",
                        str(folder)) from None
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Check, before any work, that a file can be written at ``path``: it is not a folder, and its
    folder exists (created if missing) and takes a new file. Returns ``path`` as a Path."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(path))
    try:
        check_folder_writable(target.parent)
    except OSError as err:
        reason = err.strerror.removeprefix("cannot write files here ")
        raise type(err)(err.errno, f"cannot create a file in {target.parent} {reason}",
                        str(path)) from None
    return target


@contextlib.contextmanager
def write_atomic(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with write_atomic(path) as f: f.write(...)``: the file appears at ``path`` only when the
    block ends without an error (a temporary file in the same folder, then renamed over it)."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(path))
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, temporary = _create_beside(target)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _create_beside(target: Path) -> tuple[int, Path]:
    """A new, empty file next to ``target`` (hidden, unique name), created with the permissions a
    plain ``open`` would give it (0o666 less the umask; ``mkstemp`` would give 0o600)."""
    while True:
        temporary = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue
