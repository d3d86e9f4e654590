"""Ctrl-C during training: deferred to the end of the step, so that a run stops between two whole
steps and can save a consistent checkpoint."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after ``step`` (of ``total``); ``checkpoint_path`` is where the run
    was saved (None: not saved); ``stage`` is ``"train"`` or ``"pretrain"`` (the pretraining stage
    of a run). A KeyboardInterrupt, so that code which stops on Ctrl-C still does."""

    def __init__(self, step: int, checkpoint_path: str | None = None, *, stage: str = "train",
                 total: int | None = None) -> None:
        self.step, self.checkpoint_path = step, checkpoint_path
        self.stage, self.total = stage, total
        what = "pretraining" if stage == "pretrain" else "training"
        of = f" of {total}" if total is not None else ""
        saved = (f"; saved a checkpoint to {checkpoint_path}" if checkpoint_path
                 else "; no checkpoint saved")
        super().__init__(f"stopped {what} after step {step}{of}{saved}")


#: the flag of the deferral in force (the outermost ``deferred_interrupt`` block), if any
_active: list[dict[str, bool]] = []


@contextlib.contextmanager
def deferred_interrupt(enabled: bool = True) -> Iterator[dict[str, bool]]:
    """Within the block, Ctrl-C only sets ``flag["pending"]``, so that a loop can stop between
    two whole steps (it checks the flag after each).

    Blocks nest: an inner block shares the outermost block's flag, so that an entry point can
    defer Ctrl-C over several stages (pretraining, then training) and each loop still sees it.
    ``enabled=False`` installs nothing (Ctrl-C raises at once) unless an enclosing block defers
    it. Outside the main thread (where signals cannot be handled) nothing is deferred and the flag
    stays False.
    """
    if _active:
        yield _active[0]
        return
    flag = {"pending": False}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: flag.update(pending=True))
    _active.append(flag)
    try:
        yield flag
    finally:
        _active.clear()
        signal.signal(signal.SIGINT, previous if previous is not None
                      else signal.default_int_handler)
