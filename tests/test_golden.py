"""Golden vectors: byte-for-byte regeneration, coverage, exact state round trips, the loader's
errors, and the ``minisage golden`` command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minisage import golden, spec
from minisage.cli import main
from minisage.golden import generate
from minisage.golden.format import decode_state, encode_state, render

PRESETS = spec.presets()
OFFICIAL = ("bert-adamw", "bert-adamax", "adamw-sage", "adamax-sage")


def test_committed_files_regenerate_byte_for_byte(tmp_path):
    paths = generate.export(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{p}.json" for p in PRESETS)
    committed = sorted(golden.vectors_dir().glob("*.json"))
    assert [p.name for p in committed] == sorted(p.name for p in paths)
    for path in paths:
        assert path.read_bytes() == (golden.vectors_dir() / path.name).read_bytes(), path.name
    assert generate.compare(golden.vectors_dir()) == []


@pytest.mark.parametrize("preset", PRESETS)
def test_golden_coverage(preset):
    cases = golden.load_preset(preset)
    assert 4 <= len(cases) <= 8
    assert {c.dtype.name for c in cases} == {"float32", "float64"}
    assert {1, 3, 25} <= {len(c.steps) for c in cases}
    assert all(c.id.startswith(f"{preset}/") for c in cases)
    assert len({c.id for c in cases}) == len(cases)
    # an all-zero gradient step, an exactly-zero parameter entry, weight decay on and off
    assert any(not np.any(s.grad) for c in cases for s in c.steps)
    assert all(np.any(c.param == 0) for c in cases)
    decays = {c.hparams.get("weight_decay", 0.0) > 0 for c in cases}
    assert decays == {True, False}
    # a schedule: the lr changes along some trajectory
    assert any(len({s.scheduled_lr for s in c.steps}) > 2 for c in cases)
    if preset in OFFICIAL:
        assert any(c.hparams["t_total"] != -1 for c in cases)            # internal schedule
        assert any(any(s.lr is not None for s in c.steps) for c in cases)  # lr passed to step
        clipped = [np.linalg.norm(s.grad) > c.hparams["max_grad_norm"] > 0
                   for c in cases for s in c.steps]
        assert any(clipped) and not all(clipped)                           # clipping active


@pytest.mark.parametrize("preset", PRESETS)
def test_cases_replay_through_the_spec_exactly(preset):
    for case in golden.load_preset(preset):
        rule = case.make_rule()
        p, state = case.param, case.initial_state()
        for step in case.steps:
            p, state, trace = rule.step(p, step.grad, state, lr=step.lr)
            assert np.array_equal(p, step.param) and p.dtype == case.dtype
            assert float(trace["lr"]) == step.scheduled_lr
            for key, value in step.state.items():
                assert np.array_equal(state[key], value), (case.id, key)


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
finite64 = st.floats(allow_nan=False, allow_infinity=False)


@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]),
       shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
def test_state_round_trips_exactly_through_the_json_format(data, dtype, shape):
    el = finite32 if dtype == np.float32 else finite64
    state = {"step": data.draw(st.integers(0, 10**6)),
             "exp_avg": data.draw(hnp.arrays(dtype, shape, elements=el)),
             "sensitivity_ema": data.draw(hnp.arrays(dtype, shape, elements=el))}
    text = render({"state": encode_state(state)})
    back = decode_state(json.loads(text)["state"], dtype, shape)
    assert back["step"] == state["step"]
    for key in ("exp_avg", "sensitivity_ema"):
        assert back[key].dtype == dtype and back[key].shape == shape
        # bit for bit, signed zeros and subnormals included
        assert back[key].tobytes() == state[key].tobytes()


def test_render_is_valid_json_with_repr_floats():
    doc = {"a": [0.1, 1e-300, -0.0, 3], "b": {"c": None, "d": True}, "e": [{"f": "x"}]}
    text = render(doc)
    assert json.loads(text) == doc and "0.1, 1e-300, -0.0, 3" in text
    with pytest.raises(ValueError, match="finite numbers only"):
        render([math.nan])


# ----- malformed files ---------------------------------------------------------------------------

def write_variant(tmp_path, mutate, preset="adamw-sage"):
    doc = json.loads((golden.vectors_dir() / f"{preset}.json").read_text())
    mutate(doc)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    return path


MALFORMED = [
    (lambda d: d.update(schema_version=2), "schema_version: this minisage reads version 1"),
    (lambda d: d.update(schema="other"), "schema: expected 'minisage-golden'"),
    (lambda d: d.update(preset="lamb"), "preset: unknown preset 'lamb'"),
    (lambda d: d.update(cases=[]), "cases: expected at least one case"),
    (lambda d: d["cases"][1].pop("dtype"),
     r"cases\[1\] \(adamw-sage/f64-3steps-zero-grad\): missing key 'dtype'"),
    (lambda d: d["cases"][1].update(dtype="float16"), r"\.dtype: expected one of float64"),
    (lambda d: d["cases"][1]["steps"][2]["grad"].pop(),
     r"cases\[1\] \(adamw-sage/f64-3steps-zero-grad\)\.steps\[2\]\.grad: expected 6 numbers "
     r"\(shape \[2, 3\]\), got 5"),
    (lambda d: d["cases"][1]["steps"][0]["state"].pop("sensitivity_ema"),
     r"steps\[0\]\.state: expected keys"),
    (lambda d: d["cases"][1]["steps"][1]["state"].update(step=7),
     r"steps\[1\]\.state\.step: expected the integer 2, got 7"),
    (lambda d: d["cases"][1]["steps"][0]["param"].__setitem__(3, "x"),
     r"steps\[0\]\.param\[3\]: expected a finite number, got 'x'"),
    (lambda d: d["cases"][4]["steps"][0]["param"].__setitem__(0, 0.1),
     r"steps\[0\]\.param\[0\]: 0\.1 is not a float32 value"),
    (lambda d: d["cases"][0]["hparams"].update(beta3=1.5),
     r"cases\[0\] \(adamw-sage/f64-1step\)\.hparams: adamw-sage: beta3 must be in \(0, 1\), "
     r"got 1\.5$"),
    (lambda d: d["cases"][0].update(steps=[]), r"\.steps: expected at least one step"),
    (lambda d: d["cases"][2].update(id=d["cases"][0]["id"]), r"cases\[2\]\.id: duplicate id"),
]


@pytest.mark.parametrize("mutate,message", MALFORMED)
def test_loader_names_the_file_and_the_fault(tmp_path, mutate, message):
    path = write_variant(tmp_path, mutate)
    with pytest.raises(golden.GoldenFormatError, match=message) as err:
        golden.load(path)
    assert str(err.value).startswith(f"{path}: ")


def test_loader_reports_bad_json_and_missing_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(golden.GoldenFormatError, match=f"{path}: not valid JSON"):
        golden.load(path)
    path.write_text('{"schema": "minisage-golden", "schema_version": 1, "preset": "adam", '
                    '"cases": [{"id": "a", "description": "", "dtype": "float64", "shape": [1], '
                    '"hparams": {}, "param": [NaN], "steps": []}]}')
    with pytest.raises(golden.GoldenFormatError, match=r"param\[0\]: expected a finite number"):
        golden.load(path)
    with pytest.raises(FileNotFoundError, match="golden file not found"):
        golden.load(tmp_path / "nope.json")


def test_loaded_arrays_are_read_only():
    case = golden.load_preset("adam")[0]
    with pytest.raises(ValueError):
        case.param[0] = 1.0
    assert str(case) == case.id == "adam/f64-1step"


# ----- the command line ------------------------------------------------------------------------

def test_cli_export_check_list(tmp_path, capsys):
    assert main(["golden", "export", str(tmp_path / "out"), "--preset", "sgd"]) == 0
    assert (tmp_path / "out" / "sgd.json").read_bytes() == \
        (golden.vectors_dir() / "sgd.json").read_bytes()
    assert main(["golden", "check", str(tmp_path / "out"), "--preset", "sgd"]) == 0
    (tmp_path / "out" / "sgd.json").write_text("{}")
    assert main(["golden", "check", str(tmp_path / "out"), "--preset", "sgd"]) == 1
    assert capsys.readouterr().out.endswith(
        "sgd.json: schema: expected 'minisage-golden', got None\n")
    assert main(["golden", "list", "--preset", "adamw-sage"]) == 0
    out = capsys.readouterr().out
    assert "adamw-sage/f64-25steps-warmup-linear\tfloat64\t[2, 3]\t25 steps" in out
    assert main(["golden", "export", str(tmp_path), "--preset", "lamb"]) == 2
    assert "unknown preset 'lamb'" in capsys.readouterr().err


def _exported(tmp_path, *presets):
    folder = tmp_path / "golden"
    generate.export(folder, presets or None)
    return folder


@pytest.mark.parametrize("mutate, where", [
    # a number: the case, the step, the field, the entry, both values
    (lambda d: d["cases"][1]["steps"][2]["state"]["exp_avg"].__setitem__(4, 0.5),
     "cases[1] (adamw-sage/f64-3steps-zero-grad).steps[2].state.exp_avg[4]: expected "
     "-0.00042652826048743037, got 0.5 (relative difference 1.2e+03)"),
    (lambda d: d["cases"][0]["hparams"].update(lr=0.02),
     "cases[0] (adamw-sage/f64-1step).hparams: expected 0.01, got 0.02"),
    (lambda d: d["cases"][3].update(description="other"),
     "cases[3] (adamw-sage/f64-4steps-no-decay).description: expected"),
    (lambda d: d["cases"].pop(), "cases: expected 6 entries, got 5"),
    (lambda d: d.update(extra=1), "top level: unexpected key 'extra'"),
])
def test_check_names_the_first_differing_field_and_both_values(tmp_path, mutate, where):
    folder = _exported(tmp_path, "adamw-sage")
    path = folder / "adamw-sage.json"
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    problems = generate.compare(folder, ("adamw-sage",))
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: differs from what the spec generates now: ")
    assert where.replace("hparams:", "hparams.lr:") in problems[0]


def test_check_tells_other_formatting_and_malformed_files_apart(tmp_path):
    folder = _exported(tmp_path, "sgd", "adam")
    text = (folder / "sgd.json").read_text()
    (folder / "sgd.json").write_text(text.replace('"lr": 0.1,', '"lr": 1e-1,', 1))
    (folder / "adam.json").write_text("{not json")
    sgd, adam = generate.compare(folder, ("sgd", "adam"))
    assert sgd.endswith("the same values, written differently: line 14 is '        \"lr\": 1e-1,', "
                        "expected '        \"lr\": 0.1,' (rewrite it with minisage golden export)")
    assert adam.startswith(f"{folder / 'adam.json'}: not valid JSON: Expecting property name")


def test_check_of_a_missing_or_empty_folder_is_one_error(tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert main(["golden", "check", str(missing)]) == 1
    assert capsys.readouterr() == ("", f"minisage golden: error: {missing}: No such file or "
                                       "directory\n")
    assert main(["golden", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"minisage golden: error: {tmp_path}: no golden file here (expected sgd.json, adam.json")
    folder = _exported(tmp_path, "sgd")
    assert main(["golden", "check", str(folder), "--preset", "sgd", "--preset", "adam"]) == 1
    assert capsys.readouterr().out == f"{folder / 'adam.json'}: missing\n"


def test_export_checks_the_folder_before_writing_anything(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["golden", "export", str(blocker / "golden")]) == 1
    assert capsys.readouterr().err == (f"minisage golden: error: {blocker / 'golden'}: cannot "
                                       "write files here (Not a directory)\n")
    folder = tmp_path / "golden"
    (folder / "adam.json").mkdir(parents=True)
    assert main(["golden", "export", str(folder)]) == 1
    assert capsys.readouterr().err == (f"minisage golden: error: {folder / 'adam.json'}: is a "
                                       "folder; cannot write the golden file\n")
    assert sorted(p.name for p in folder.iterdir()) == ["adam.json"]  # sgd.json not written


def test_golden_list_into_a_closed_pipe_is_quiet():
    """``minisage golden list | head -1``: the reader leaves early; no BrokenPipeError."""
    command = f"{sys.executable} -m minisage golden list | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("sgd/f64-1step")
    assert result.stderr == ""
