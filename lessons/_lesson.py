"""What every lesson shares: the fast mode, where figures go, and how a figure is saved and shown.

Imported first by each lesson (``from _lesson import ...``). A lesson owns its process, so it
tunes it (:func:`minisage.runtime.tune_process`: one BLAS thread, fastest for tiny matrices; freed
memory kept for reuse). Works from a checkout without ``pip install .`` too: then the package
beside ``lessons/`` is used.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import minisage  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(HERE.parent))
    import minisage  # noqa: F401
from minisage import runtime

runtime.tune_process()

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAST = os.environ.get("MINISAGE_FAST") == "1"  # the test suite's quick mode: same code, less work
FIGURES = Path(os.environ.get("MINISAGE_FIGURES_DIR") or HERE / "figures")
FIGURES.mkdir(parents=True, exist_ok=True)


def show(path):
    """Report a written figure (and show it when running in a notebook)."""
    print(f"figure written: {path}")
    if "ipykernel" in sys.modules:
        from IPython.display import Image, display

        display(Image(str(path)))


def save(fig, name):
    """Write a figure as PNG into FIGURES, then show it."""
    path = FIGURES / name
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    show(path)
