"""Ctrl-C during training: deferred to the end of the step, so that a run stops between two whole
steps and can save a consistent checkpoint."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after ``step``; ``checkpoint_path`` is where the run was saved
    (None: not saved). A KeyboardInterrupt, so that code which stops on Ctrl-C still does."""

    def __init__(self, step: int, checkpoint_path: str | None = None) -> None:
        self.step = step
        self.checkpoint_path = checkpoint_path
        saved = (f"; saved a checkpoint to {checkpoint_path}" if checkpoint_path
                 else "; no checkpoint saved")
        super().__init__(f"stopped after step {step}{saved}")


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[dict[str, bool]]:
    """Within the block, Ctrl-C only sets ``flag["pending"]``, so that the loop can stop between
    two whole steps. Outside the main thread (where signals cannot be handled) Ctrl-C is not
    deferred and the flag stays False."""
    flag = {"pending": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: flag.update(pending=True))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
