"""The lessons: each runs as a script in fast mode and writes its figures; each is a jupytext
percent-format script (a markdown cell first, then code and markdown cells).

All lessons start at once as subprocesses (MINISAGE_FAST=1, figures into a temporary folder, so
the repository is not touched); each test then waits for its own lesson.
"""

from __future__ import annotations

import importlib.util
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
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def written_figures(name: str) -> list[str]:
    """The figures a lesson writes here: without torch, lesson 7 writes its figure under another
    name, so that the committed one (drawn with torch) is never replaced by a variant."""
    if HAVE_TORCH or name != "07_golden_reference.py":
        return EXPECTED_FIGURES[name]
    return ["07_golden_errors_without_torch.png"]
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
    for figure in written_figures(name):
        path = figures / figure
        assert path.exists(), f"{name} did not write {figure}:\n{output[-2000:]}"
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, f"{figure} is not a PNG"
        assert len(data) > 5000, f"{figure} is only {len(data)} bytes"
    written = sorted(p.name for p in figures.glob("*.png"))
    assert written == sorted(written_figures(name)), f"{name} wrote {written}"


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


def first_code_cell(name: str) -> str:
    """The source of a lesson's first code cell (its imports)."""
    cells = re.split(r"^# %%.*$", (LESSONS_DIR / name).read_text(encoding="utf-8"), flags=re.M)
    markers = re.findall(r"^# %%.*$", (LESSONS_DIR / name).read_text(encoding="utf-8"), re.M)
    return next(cell for marker, cell in zip(markers, cells[1:]) if marker == "# %%")


def test_every_lesson_finds_its_helper_as_a_notebook_run_anywhere(tmp_path):
    """A notebook has no ``__file__`` and runs in whatever folder Jupyter started in: the first
    cell of each lesson, run so from an unrelated folder, must still import lessons/_lesson.py
    (found beside the minisage package in use: here the checkout, on PYTHONPATH)."""
    script = f"""
import sys
from pathlib import Path
cells = {[first_code_cell(name) for name in sorted(EXPECTED_FIGURES)]!r}
start = list(sys.path)
for cell in cells:
    sys.path[:] = start
    sys.modules.pop("_lesson", None)
    exec(compile(cell, "<notebook cell>", "exec"), {{"__name__": "__main__"}})
    print(Path(sys.modules["_lesson"].__file__).resolve())
"""
    env = {**os.environ, "PYTHONPATH": str(LESSONS_DIR.parent),
           "MINISAGE_FIGURES_DIR": str(tmp_path / "figures"), "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    helper = str((LESSONS_DIR / "_lesson.py").resolve())
    assert result.stdout.splitlines() == [helper] * len(EXPECTED_FIGURES)


def test_a_lesson_executes_as_a_notebook_outside_the_checkout(tmp_path):
    """The 'lessons' extra (jupytext, nbconvert, ipykernel) is what this needs."""
    for module in ("jupytext", "nbclient", "ipykernel"):
        pytest.importorskip(module)
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(LESSONS_DIR / "02_adam.py")
    env = {"MINISAGE_FAST": "1", "MINISAGE_FIGURES_DIR": str(tmp_path / "figures")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits them
    try:
        NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == sorted(
        EXPECTED_FIGURES["02_adam.py"])
