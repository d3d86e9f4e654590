"""The lessons: each runs as a script in fast mode and writes its figures; each is a jupytext
percent-format script (a markdown cell first, then code and markdown cells).

All lessons start at once as subprocesses (MINISAGE_FAST=1, figures into a temporary folder, so
the repository is not touched); each test then waits for its own lesson.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parent.parent / "lessons"

#: lesson file -> the figures it must write
EXPECTED_FIGURES = {
    "01_autograd.py": ["01_derivatives.png", "01_gradient_check.png"],
    "02_adam.py": ["02_adam_one_parameter.png", "02_trajectories.png"],
    "03_sensitivity.py": ["03_taylor_check.png", "03_minibatch_noise.png",
                          "03_sensitivity_over_steps.png"],
    "04_sage_step.py": ["04_first_step_and_zero_entry.png", "04_official_split.png",
                        "04_multiplier_distribution.png"],
    "05_transformer_dynamics.py": ["05_learning_curves.png", "05_sensitivity_heatmap.png",
                                   "05_ibar_distribution.png", "05_multiplier_distribution.png"],
    "06_redundancy.py": ["06_pruning.png", "06_generalization_gap.png"],
    "07_golden_reference.py": ["07_golden_errors.png"],
    "08_multiplier.py": ["08_scale_and_noise.png", "08_batch_size.png"],
}
TIMEOUT_S = 300  # for all lessons together, started in parallel on a possibly busy machine
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: a markdown heading written as a comment: "# # Title", "# ## Section", ...
MARKDOWN_HEADING = re.compile(r"#\s*#{1,6}\s+\S")


def test_every_lesson_is_listed():
    on_disk = sorted(p.name for p in LESSONS_DIR.glob("[0-9][0-9]_*.py"))
    assert on_disk == sorted(EXPECTED_FIGURES)


@pytest.fixture(scope="module")
def lesson_runs(tmp_path_factory):
    """Start every lesson in fast mode at once; yield {lesson: (process, figures dir, log)}."""
    started = {}
    for name in EXPECTED_FIGURES:
        out = tmp_path_factory.mktemp(name.removesuffix(".py"))
        log = open(out / "output.txt", "w+")  # noqa: SIM115 (closed below)
        env = {**os.environ, "MINISAGE_FAST": "1", "MINISAGE_FIGURES_DIR": str(out / "figures"),
               "MPLBACKEND": "Agg"}
        proc = subprocess.Popen([sys.executable, str(LESSONS_DIR / name)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=out)
        started[name] = (proc, out / "figures", log)
    yield started
    for proc, _, log in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_lesson_runs_fast_and_writes_its_figures(lesson_runs, name):
    proc, figures, log = lesson_runs[name]
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{name} did not finish within {TIMEOUT_S} s in fast mode")
    log.seek(0)
    output = log.read()
    assert code == 0, f"{name} exited with status {code}:\n{output[-4000:]}"
    for figure in EXPECTED_FIGURES[name]:
        path = figures / figure
        assert path.exists(), f"{name} did not write {figure}:\n{output[-2000:]}"
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, f"{figure} is not a PNG"
        assert len(data) > 5000, f"{figure} is only {len(data)} bytes"
    written = sorted(p.name for p in figures.glob("*.png"))
    assert written == sorted(EXPECTED_FIGURES[name]), f"{name} wrote {written}"


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_lesson_is_jupytext_percent_format(name):
    text = (LESSONS_DIR / name).read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "# %% [markdown]", f"{name} must start with a markdown cell"
    markers = [line for line in lines if line.startswith("# %%")]
    assert len(markers) >= 4
    assert all(re.fullmatch(r"# %%( \[markdown\])?", m) for m in markers), markers
    code_cells = [m for m in markers if m == "# %%"]
    markdown_cells = [m for m in markers if m != "# %%"]
    assert code_cells and len(markdown_cells) >= 2
    # every line of a markdown cell is a comment (jupytext turns "# text" into "text"), and no
    # code cell holds a markdown heading ("# ## ..."): it would show as a comment in a notebook
    in_markdown = False
    for number, line in enumerate(lines, start=1):
        if line.startswith("# %%"):
            in_markdown = line == "# %% [markdown]"
        elif in_markdown:
            assert line == "" or line.startswith("#"), f"{name}:{number}: not a comment: {line!r}"
        else:
            assert not MARKDOWN_HEADING.match(line), (
                f"{name}:{number}: a markdown heading in a code cell (start a '# %% [markdown]' "
                f"cell before it): {line!r}")
    compile(text, name, "exec")  # valid Python


def test_lessons_readme_lists_every_lesson_with_a_thumbnail():
    readme = (LESSONS_DIR / "README.md").read_text(encoding="utf-8")
    for name, figures in EXPECTED_FIGURES.items():
        assert name in readme, f"lessons/README.md does not list {name}"
        assert any(f"figures/{figure}" in readme for figure in figures), (
            f"lessons/README.md shows no figure of {name}")
