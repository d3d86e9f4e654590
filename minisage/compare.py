"""``minisage compare``: the main job. Several optimizers on one task over several seeds, compared
fairly, reported with their uncertainty, with figures of what SAGE's multiplier does.

The protocol (:func:`compare`):

- **Each optimizer at its own settings** (``lr``, and ``beta3`` for SAGE). They come from a
  tuning record (:func:`tune`: a small grid, scored on the *validation* split of seeds reserved
  for tuning, ``TUNING_SEEDS``), from the command line, or from the defaults; the summary says
  which, per optimizer (``selected_by``). The records committed under ``minisage/tuned/`` make the
  default run fast; ``minisage compare --tune`` re-derives them.
- **Reported on a test split that selection never saw**, with seeds ``0 .. n-1`` that tuning did
  not use. A seed fixes its run's training data (for ``finetune``, its labeled set), the
  initialization and the batch order, and every optimizer gets the same ones: so the table gives
  the **paired** difference to the baseline (the first optimizer) per seed, with its 95%
  confidence interval and a paired t-test, beside each optimizer's mean and 95% interval.
- **The mechanism**: each run's sensitivity recorder (:class:`minisage.train.SensitivityRecorder`)
  measures, with the SAGE rule, whether the multiplier r follows the sensitivity (r per decile of
  Ihat, their rank correlation), the effective learning rate, how far entries moved by their
  starting sensitivity, and how concentrated the sensitivity is at the end; for the baseline
  these are what SAGE *would* compute on its trajectory, never used by it.

Runs are independent, so they are spread over processes (``processes``); each run is a function
of its config alone, so the numbers do not depend on how many.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from minisage import runtime, spec
from minisage.errors import UsageError
from minisage.files import check_folder_writable
from minisage.stats import paired_p
from minisage.tasks import make_task
from minisage.train import (
    TrainConfig,
    batch_sensitivity,
    decile_means,
    evaluate,
    lr_schedule,
    mean_ci,
    nan_to_none,
    pretrained_state,
    pruning_curve,
    sage_matrices,
    train,
)

DEFAULT_OPTIMIZERS = ("bert-adamw", "adamw-sage")
#: the seeds that selection (tuning) uses; reports use 0, 1, ... and never these
TUNING_SEEDS = (1000, 1001, 1002)
#: the grid searched by --tune: every preset gets the lrs; SAGE presets also the beta3s
PLAIN_LRS = (3e-4, 1e-3, 3e-3)
SAGE_LRS = (1e-3, 3e-3, 1e-2)
SAGE_BETA3S = (0.7, 0.85)
#: how often a grid whose best lr lies on its edge is extended by a factor 3 beyond it
MAX_EXTENSIONS = 2
PRUNE_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)
TUNED_DIR = Path(__file__).resolve().parent / "tuned"
#: the protocol fields a tuning record must share with a run for its settings to apply
SETTINGS_FIELDS = ("optimizer", "lr", "beta3", "seed")


def default_config(task: str = "finetune", **overrides) -> TrainConfig:
    """compare's protocol for ``task``: 600 steps of batch 32 (linear warm-up over 10%, then
    decay), the default model (width 32, 2 blocks, 4 heads), float32 (the engine is exact in
    float64 too, and float32 is twice as fast), evaluated every 20 steps on 256 rows (the
    curves), the sensitivity recorder every 20 steps. ``overrides``: any TrainConfig field."""
    config = TrainConfig(task=task, steps=600, dtype="float32", eval_rows=256)
    config = replace(config, **overrides)
    every = max(1, config.steps // 30)
    return replace(config, eval_every=overrides.get("eval_every", every),
                   record_every=overrides.get("record_every", every))


def protocol_of(config: TrainConfig) -> dict:
    """The fields of a config that tuning and reporting must share (all but the settings)."""
    return {k: v for k, v in asdict(config).items() if k not in SETTINGS_FIELDS}


# ----- one run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One training run to do: ``config`` (its optimizer, settings and seed), whether to report
    on the test split, and the pretrained weights to start from (None: none)."""

    config: TrainConfig
    report: bool
    init_state: dict | None = None


def run_job(job: Job) -> dict:
    """Train ``job.config`` and measure it; a plain dict (it crosses process boundaries).

    Always: the metrics history and the final metrics on the whole validation split and the
    first ``TRAIN_ROWS`` training rows. For a report (``job.report``) also: the test split,
    the mechanism measurements of the recorder, the pruning curves, how far entries moved per
    decile of their starting sensitivity, and how concentrated the sensitivity is at the end.
    """
    config = job.config
    task = make_task(config.task, seed=config.seed, n_train=config.labels)
    tick = time.perf_counter()
    result = train(config, task, init_state=job.init_state)
    model = result.model
    record = {"optimizer": config.optimizer, "seed": config.seed, "lr": config.lr,
              "beta3": config.beta3, "history": result.history,
              "steps_per_second": result.steps_per_second,
              "val": evaluate(model, task, task.val),
              "train": evaluate(model, task, task.train.head(TRAIN_ROWS))}
    if job.report:
        record["test"] = evaluate(model, task, task.test)
        recorder = result.recorder
        lr_at = lr_schedule(config)
        record["mechanism"] = [{**m, "lr": lr_at(m["step"]),
                                "effective_lr": lr_at(m["step"]) * (
                                    m["r_median"] if spec.rule_class(config.optimizer).sage
                                    else 1.0)}
                               for m in recorder.mechanism]
        record["layers"] = recorder.rows
        record["histograms"] = {s: {k: v.tolist() for k, v in h.items()}
                                for s, h in recorder.histograms.items()}
        record["movement"] = movement_by_sensitivity(recorder, model)
        scores = batch_sensitivity(model, task)
        record["concentration"] = concentration(scores)
        record["pruning"] = [row for criterion in ("sensitivity", "magnitude")
                             for row in pruning_curve(model, task, PRUNE_FRACTIONS, criterion,
                                                      scores=scores,
                                                      split=task.val.head(PRUNE_ROWS))]
    record["seconds"] = time.perf_counter() - tick
    return record


TRAIN_ROWS = 1024  # training rows measured for the final training accuracy
PRUNE_ROWS = 512  # validation rows each point of a pruning curve is evaluated on


def movement_by_sensitivity(recorder, model) -> list[float]:
    """Mean |theta_end - theta_start| of the SAGE matrices' entries in each decile of their
    sensitivity I at the first step (deciles by rank over all watched entries)."""
    start = np.concatenate([recorder.first_sensitivity[n].ravel() for n, _ in
                            sage_matrices(model)])
    moved = np.concatenate([np.abs(p.data - recorder.initial[n]).ravel()
                            for n, p in sage_matrices(model)])
    return decile_means(start, moved)


def concentration(sensitivities: dict[str, np.ndarray]) -> dict[str, float]:
    """How the sensitivity I of the SAGE matrices is spread: the share of entries below a tenth
    of the median (redundant entries), and the share of the total held by the top 10%."""
    values = np.sort(np.concatenate([s.ravel() for s in sensitivities.values()]))
    top = values[int(round(0.9 * values.size)):]
    return {"share_below_tenth_of_median": float(np.mean(values < 0.1 * np.median(values))),
            "top10_share_of_total": float(top.sum() / values.sum()) if values.sum() else 0.0}


# ----- running many runs ---------------------------------------------------------------------
#: how far below the parent's the workers' scheduling priority is (Unix niceness): their start-up
#: (imports) then runs beside the parent's pretraining without slowing it (it is what they wait for)
WORKER_NICENESS = 10


def _worker_setup() -> None:
    # The parent handles Ctrl-C; workers get the same tuning as the command line, and import
    # the figures' module now, while the parent is busy (pretraining), not when drawing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "nice"):  # (not on Windows)
        os.nice(WORKER_NICENESS)
    runtime.tune_process(threads=1)
    import minisage.plots  # noqa: F401

    # A worker ends once multiprocessing has cleaned up after it; the interpreter's own
    # teardown (every module, matplotlib's included) would keep the parent waiting half a second.
    atexit.register(_exit_now)


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Workers:
    """Worker processes for the runs and the figures, or none: ``Workers(1)`` does everything
    in this process.

    They start at once (spawned: no forked BLAS or matplotlib state), so that their start-up
    overlaps whatever the caller does next, such as pretraining. As a context manager they are
    closed at the end of the block, or terminated after an error or Ctrl-C. Each run is a
    function of its config alone, so the numbers do not depend on how many processes there are.
    """

    def __init__(self, processes: int = 1) -> None:
        if processes < 1:
            raise ValueError(f"Workers: processes must be >= 1, got {processes}")
        self.processes = processes
        self._pool = None
        if processes > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(processes, initializer=_worker_setup)

    def imap_unordered(self, fn: Callable, items: Sequence) -> Iterable:
        """``fn`` over ``items``, results as they finish (in order, without processes)."""
        return map(fn, items) if self._pool is None else self._pool.imap_unordered(fn, items)

    def submit(self, fn: Callable, args: tuple) -> Callable[[], object]:
        """Start ``fn(*args)``; returns a function that waits for its result. Without processes
        it runs now."""
        if self._pool is None:
            value = fn(*args)
            return lambda: value
        return self._pool.apply_async(fn, args).get

    def terminate(self) -> None:
        """Stop the processes now (their unfinished work is lost); later calls run here."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def close(self) -> None:
        """Let the processes finish and exit; later calls run here."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()


@contextlib.contextmanager
def _workers(processes: int | Workers, jobs: int) -> Iterator[Workers]:
    """``processes`` itself when it is a :class:`Workers` (the caller closes it), else new
    workers for ``jobs`` runs, closed at the end of the block."""
    if isinstance(processes, Workers):
        yield processes
        return
    with Workers(max(1, min(processes, jobs))) as workers:
        yield workers


def run_jobs(jobs: Sequence[Job], processes: int | Workers = 1,
             on_done: Callable[[dict], None] | None = None) -> tuple[list[dict], bool]:
    """Run ``jobs`` (on ``processes``: a number of worker processes, or :class:`Workers`);
    returns the records in the order of ``jobs`` that finished, and whether all did. Ctrl-C
    stops at once (the workers are terminated), keeps the finished runs, and returns
    ``complete=False``."""
    records: dict[int, dict] = {}
    # the longest runs first (SAGE's multiplier block makes its runs the longer ones), so that
    # the last runs to start are short and the processes finish close together
    order = sorted(enumerate(jobs), key=lambda item: (
        -item[1].config.steps, not spec.rule_class(item[1].config.optimizer).sage))
    with _workers(processes, len(jobs)) as workers:
        try:
            for i, record in workers.imap_unordered(_run_indexed, order):
                records[i] = record
                if on_done:
                    on_done(record)
        except KeyboardInterrupt:
            workers.terminate()
            return [records[i] for i in sorted(records)], False
    return [records[i] for i in sorted(records)], True


def _run_indexed(item):
    i, job = item
    return i, run_job(job)


# ----- settings: tuning and where they come from -------------------------------------------------
def grid_for(preset: str) -> list[dict]:
    """The starting grid of ``preset``: lrs, and for SAGE presets lr x beta3."""
    if spec.rule_class(preset).sage:
        return [{"lr": lr, "beta3": b3} for lr in SAGE_LRS for b3 in SAGE_BETA3S]
    return [{"lr": lr} for lr in PLAIN_LRS]


def tune(base: TrainConfig, optimizers: Sequence[str], init_state: dict | None = None,
         seeds: Sequence[int] = TUNING_SEEDS, processes: int | Workers = 1, progress=None,
         log=print) -> dict:
    """Select each optimizer's settings by mean final *validation* accuracy over ``seeds``.

    Starts from :func:`grid_for` and, where the best lr lies on the edge of its grid, extends
    the grid by a factor 3 beyond it (up to ``MAX_EXTENSIONS`` times). The test split is never
    evaluated. Returns the tuning record: the protocol, the seeds, every point with its scores,
    and the selected settings.
    """
    points = {name: grid_for(name) for name in optimizers}
    scores: dict[str, list[dict]] = {name: [] for name in optimizers}
    # one set of workers for every round (the first round is the largest)
    first_round = sum(len(p) for p in points.values()) * len(seeds)
    with _workers(processes, first_round) as workers:
        for _ in range(MAX_EXTENSIONS + 1):
            todo = [(name, point) for name in optimizers for point in points[name]
                    if not any(_same(point, s) for s in scores[name])]
            if not todo:
                break
            jobs = [Job(replace(base, optimizer=name, seed=seed, **point), report=False,
                        init_state=init_state)
                    for name, point in todo for seed in seeds]
            log(f"tuning: {len(jobs)} runs ({len(todo)} settings x {len(seeds)} seeds)")
            records, complete = run_jobs(jobs, workers, progress)
            if not complete:
                raise KeyboardInterrupt("tuning interrupted; nothing selected")
            for name, point in todo:
                scores[name].append(_score(point, [r for r in records if r["optimizer"] == name
                                                   and _same(point, r)]))
            for name in optimizers:
                points[name] = _extend(scores[name])
    selected = {name: _best(scores[name]) for name in optimizers}
    return {"task": base.task, "protocol": protocol_of(base), "seeds": list(seeds),
            "metric": "mean final validation accuracy over the tuning seeds (ties: lower "
                      "validation loss)",
            "scores": scores, "selected": selected}


def _score(point: dict, records: list[dict]) -> dict:
    """One grid point's score: its final validation accuracy and loss over the tuning seeds."""
    accuracy = [r["val"]["accuracy"] for r in records]
    return {**point, "val_accuracy": float(np.mean(accuracy)),
            "val_loss": float(np.mean([r["val"]["loss"] for r in records])),
            "val_accuracy_per_seed": accuracy}


def _same(point: dict, other: dict) -> bool:
    return all(math.isclose(point[k], other[k]) for k in point)


def _best(scored: list[dict]) -> dict:
    best = max(scored, key=lambda s: (s["val_accuracy"], -s["val_loss"]))
    return {k: best[k] for k in ("lr", "beta3") if k in best}


def _extend(scored: list[dict]) -> list[dict]:
    """The grid points to add: beyond the best lr, by a factor 3, where it lies on the edge."""
    best = _best(scored)
    lrs = sorted({s["lr"] for s in scored})
    if best["lr"] == lrs[0]:
        new_lr = lrs[0] / 3
    elif best["lr"] == lrs[-1]:
        new_lr = lrs[-1] * 3
    else:
        return []
    others = {k: v for k, v in best.items() if k != "lr"}
    return [{"lr": float(f"{new_lr:.3g}"), **others}]  # 3e-3 * 3 is 9e-3, not 0.009000000000000001


def record_path(task: str) -> Path:
    """Where the committed tuning record of ``task`` lives."""
    return TUNED_DIR / f"{task}.json"


def load_record(path: str | Path) -> dict:
    """A tuning record (JSON written by :func:`tune`); UsageError naming the file if it is not."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not a tuning record (invalid JSON: {err})") from None
    if not isinstance(record, dict) or not {"protocol", "selected", "seeds"} <= set(record):
        raise UsageError(f"{path}: not a tuning record (needs protocol, selected and seeds)")
    return record


def choose_settings(base: TrainConfig, optimizers: Sequence[str], given: dict[str, dict],
                    record: dict | None, record_name: str) -> dict[str, dict]:
    """Each optimizer's settings and where they came from: ``given`` on the command line (per
    optimizer: lr and/or beta3), else the tuning ``record`` when its protocol is this run's,
    else the defaults (lr from ``base``, beta3 0.75) -- said plainly."""
    protocol_matches = record is not None and record["protocol"] == protocol_of(base)
    settings = {}
    for name in optimizers:
        sage = spec.rule_class(name).sage
        point = {"lr": base.lr, **({"beta3": base.beta3} if sage else {})}
        if protocol_matches and name in record["selected"]:
            point.update(record["selected"][name])
            source = (f"tuning record {record_name} (grid on the validation split of seeds "
                      f"{record['seeds']})")
        elif record is not None and not protocol_matches:
            source = (f"default (the tuning record {record_name} is for another protocol; run "
                      "--tune)")
        else:
            source = "default (no tuning record for this task; run --tune)"
        if name in given:
            point.update(given[name])
            source = "given on the command line"
        settings[name] = {**point, "selected_by": source}
    return settings


# ----- the comparison ----------------------------------------------------------------------------
def compare(base: TrainConfig, optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, seeds: int = 5,
            settings: dict[str, dict] | None = None, out: str | Path | None = None,
            processes: int | Workers = 1, progress=None, log=print,
            init_state: dict | None = None) -> dict:
    """Run every optimizer (at its ``settings``: lr, beta3, selected_by) on seeds 0..seeds-1,
    report on the test split, write tables and figures into ``out``; returns the summary.

    ``base``: the protocol (see :func:`default_config`). The first optimizer is the baseline of
    the paired differences. ``processes``: how many worker processes run the runs and draw the
    figures, or :class:`Workers` to use. ``progress(record)`` is called as each run finishes.
    ``init_state``: the pretrained weights, for a task with pretraining (default: pretrain now,
    see :func:`pretrained_weights`, while the workers start). Ctrl-C keeps the finished runs:
    the summary is then marked ``"partial": true`` and covers the seeds that every optimizer
    finished.
    """
    if not optimizers:
        raise UsageError("compare: give at least one optimizer")
    settings = settings or choose_settings(base, optimizers, {}, None, "")
    out = prepare_output(out)
    started = time.perf_counter()
    task = make_task(base.task, seed=0, n_train=base.labels)
    with _workers(processes, seeds * len(optimizers)) as workers:
        if init_state is None:
            init_state = pretrained_weights(base, log)
        jobs = [Job(replace(base, optimizer=name, seed=seed,
                            **{k: v for k, v in settings[name].items() if k in ("lr", "beta3")}),
                    report=True, init_state=init_state)
                for seed in range(seeds) for name in optimizers]
        records, complete = run_jobs(jobs, workers, progress)
        summary = summarize(task, base, optimizers, settings, records, complete)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        summary["processes"] = workers.processes
        write_outputs(out, summary, records, workers)
    log(format_table(summary))
    log(f"\nwrote metrics and figures to {out}")
    if not complete:
        raise KeyboardInterrupt(f"stopped early: wrote the {len(records)} finished runs and a "
                                f"partial summary to {out}")
    return summary


def pretrained_weights(base: TrainConfig, log=print) -> dict | None:
    """The weights every run of ``base.task`` starts from (None: the task has no pretraining)."""
    task = make_task(base.task, seed=0, n_train=base.labels)
    if task.pretrain is None:
        return None
    tick = time.perf_counter()
    state = pretrained_state(base, task)
    log(f"pretrained on {task.pretrain.description} in {time.perf_counter() - tick:.1f} s")
    return state


def prepare_output(out: str | Path | None) -> Path:
    """The output folder, created and checked writable now, before any training."""
    out = Path(out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    return check_folder_writable(out)


def paired(base_values: Sequence[float], other_values: Sequence[float]) -> dict:
    """The paired difference other - base over seeds: mean, 95% CI half-width (Student t), the
    per-seed differences and the two-sided paired t-test p (nan for fewer than two seeds)."""
    d = np.asarray(other_values, float) - np.asarray(base_values, float)
    mean, half = mean_ci(d)
    return {"mean": mean, "ci95": half, "per_seed": d.tolist(),
            "p_paired_t": paired_p(base_values, other_values)}


def summarize(task, base: TrainConfig, optimizers: Sequence[str], settings: dict,
              records: Iterable[dict], complete: bool = True) -> dict:
    """The summary of the report runs: per optimizer its settings and where they came from, and
    the test metrics (mean, 95% CI, per seed) over the seeds every optimizer finished; the
    paired differences to the baseline (the first optimizer)."""
    by = {(r["optimizer"], r["seed"]): r for r in records}
    seeds = sorted({s for (_, s) in by if all((n, s) in by for n in optimizers)})
    rows = {}
    for name in optimizers:
        runs = [by[(name, s)] for s in seeds]
        row = {"lr": settings[name]["lr"], "beta3": settings[name].get("beta3"),
               "selected_by": settings[name]["selected_by"], "seeds": seeds}
        metrics = {"test_accuracy": [r["test"]["accuracy"] for r in runs],
                   "test_loss": [r["test"]["loss"] for r in runs],
                   "train_accuracy": [r["train"]["accuracy"] for r in runs],
                   "gap": [r["train"]["accuracy"] - r["test"]["accuracy"] for r in runs]}
        for key, values in metrics.items():
            mean, half = mean_ci(values) if values else (float("nan"), float("nan"))
            row[key] = {"mean": mean, "ci95": half, "per_seed": values}
        row["steps_per_second"] = (float(np.mean([r["steps_per_second"] for r in runs]))
                                   if runs else float("nan"))
        rows[name] = row
    baseline = optimizers[0]
    comparisons = {}
    for name in optimizers[1:]:
        if seeds:
            comparisons[name] = {key: paired(rows[baseline][key]["per_seed"],
                                             rows[name][key]["per_seed"])
                                 for key in ("test_accuracy", "test_loss", "gap")}
    return {"task": task.name, "description": task.description,
            "bayes_accuracy": task.bayes_accuracy, "test_rows": len(task.test),
            "chance_accuracy": 1 / task.num_classes if task.head == "classify" else None,
            "baseline": baseline, "partial": not complete, "config": protocol_of(base),
            "optimizers": rows, "paired": comparisons}


def _ci(value: float, half: float, digits: int = 4) -> str:
    if math.isnan(half):
        return f"{value:.{digits}f} (CI n/a)"
    return f"{value:.{digits}f} +- {half:.{digits}f}"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def format_table(summary: dict) -> str:
    """The human-readable report of :func:`summarize`'s result."""
    opt = summary["optimizers"]
    seeds = next(iter(opt.values()))["seeds"]
    bayes = summary["bayes_accuracy"]
    chance = summary["chance_accuracy"]
    lines = [f"task {summary['task']}: {summary['description']}"
             + (f"; Bayes-optimal accuracy {bayes:.3f}" if bayes is not None else "")
             + (f", chance {chance:.3f}" if chance is not None else ""),
             f"{len(seeds)} seed(s) {seeds}, each with its own training data, initialization "
             f"and batch order, shared by every optimizer; {summary['test_rows']} test rows "
             "that selection never saw; mean +- 95% CI over seeds"
             + (" (PARTIAL: interrupted)" if summary["partial"] else ""),
             ""]
    header = (f"{'optimizer':<12} {'lr':>7} {'beta3':>5} {'test accuracy':>22} "
              f"{'test loss':>22} {'train acc':>9} {'gap':>22}")
    lines += [header, "-" * len(header)]
    for name, row in opt.items():
        beta3 = f"{row['beta3']:.2f}" if row["beta3"] is not None else "-"
        lines.append(f"{name:<12} {row['lr']:>7.1e} {beta3:>5} "
                     f"{_ci(row['test_accuracy']['mean'], row['test_accuracy']['ci95']):>22} "
                     f"{_ci(row['test_loss']['mean'], row['test_loss']['ci95']):>22} "
                     f"{row['train_accuracy']['mean']:>9.4f} "
                     f"{_ci(row['gap']['mean'], row['gap']['ci95']):>22}")
    for name, diff in summary["paired"].items():
        lines.append("")
        lines.append(f"paired difference {name} - {summary['baseline']} (per seed, 95% CI, "
                     "paired t-test):")
        for key, label in (("test_accuracy", "test accuracy"), ("test_loss", "test loss"),
                           ("gap", "gap")):
            d = diff[key]
            lines.append(f"  {label:<14} {_ci(d['mean'], d['ci95']):>24}   "
                         f"p = {_p(d['p_paired_t'])}")
    lines.append("")
    lines.append("settings:")
    for name, row in opt.items():
        lines.append(f"  {name}: {row['selected_by']}")
    return "\n".join(lines)


def write_outputs(out: Path, summary: dict, records: list[dict],
                  workers: Workers | None = None) -> list[str]:
    """summary.json (strict JSON), metrics.csv, mechanism.csv, pruning.csv, movement.csv,
    layers.csv and the figures (drawn by ``workers`` when given, while this process writes the
    tables); returns the figure paths."""
    if not records:
        pending = None
    else:
        from minisage import plots  # here: matplotlib is imported by the runs that draw

        calls = plots.compare_figure_calls(out, summary, records)
        pending = [workers.submit(fn, args) for fn, args in calls] if workers else None
    with open(out / "summary.json", "w") as f:
        json.dump(nan_to_none(summary), f, indent=2, allow_nan=False)
    _write_rows(out / "metrics.csv", [{"optimizer": r["optimizer"], "seed": r["seed"], **row}
                                      for r in records for row in r["history"]])
    _write_rows(out / "mechanism.csv", [
        {"optimizer": r["optimizer"], "seed": r["seed"],
         **{k: v for k, v in m.items() if k != "r_by_decile"},
         **{f"r_decile_{i + 1}": v for i, v in enumerate(m["r_by_decile"])}}
        for r in records for m in r["mechanism"]])
    _write_rows(out / "pruning.csv", [{"optimizer": r["optimizer"], "seed": r["seed"], **row}
                                      for r in records for row in r["pruning"]])
    _write_rows(out / "movement.csv", [
        {"optimizer": r["optimizer"], "seed": r["seed"], "decile_of_first_sensitivity": i + 1,
         "mean_abs_change": value} for r in records for i, value in enumerate(r["movement"])])
    _write_rows(out / "layers.csv", [{"optimizer": r["optimizer"], "seed": r["seed"], **row}
                                     for r in records for row in r["layers"]])
    if not records:
        return []
    if pending is None:
        return [fn(*args) for fn, args in calls]
    return [result() for result in pending]


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def config_fields() -> tuple[str, ...]:
    """The TrainConfig fields a caller may set for a comparison."""
    return tuple(f.name for f in fields(TrainConfig) if f.name not in SETTINGS_FIELDS)
