"""Experiment sweeps: a base config × a grid of overrides × seeds, run as parallel one-thread processes.

A :class:`SweepConfig` names a base config (a YAML file plus ``key=value`` overrides), a grid (one or
more products of ``key → values``) and a number of seeds; :func:`plan` turns it into runs (every grid
point × every seed, identical points once), :func:`run_sweep` runs them with ``jobs`` worker processes
of one torch thread each (``OMP_NUM_THREADS=1``; ``devices`` pins each worker to one GPU through
``CUDA_VISIBLE_DEVICES``) and :func:`collect` gathers every run's metrics into mean ± half-width of the
95 % Student-t interval over seeds (``results.json``, ``report.md``, ``metrics.png``).

A run is ``runner(data, folder)``: ``data`` is the base config with the point's overrides and the
seed, ``folder`` the run's own folder; it returns the run's metrics (the default, :func:`train`,
trains a :class:`~distar.train.TrainConfig` and returns the last ``log.jsonl`` record). An optional
``evaluate(data, folder)`` adds metrics. A run that finished wrote ``results/<name>.json``
(atomically); rerunning the sweep into the same folder skips those and resumes the others, whose
runner continues from what the folder holds (``--resume latest`` for :func:`train`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import itertools
import json
import math
import multiprocessing
import os
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from distar.config import ConfigError, apply_overrides, field, from_dict, read_config_file, set_key
from distar.errors import UserError

#: Two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal 1.96).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

#: What a sweep folder holds besides the runs' own folders (``runs/<name>``).
STATE_FILE, RESULTS_FILE, REPORT_FILE, PLOT_FILE = "sweep.json", "results.json", "report.md", "metrics.png"


def _write(path: Path, text: str) -> None:
    """``text`` to ``path`` atomically (:func:`distar.io.write_atomic`, imported here: it needs torch)."""
    from distar.io import write_atomic

    write_atomic(path, text.encode())


def as_number(value: Any) -> float:
    """A report field as a float: NaN when it is missing or not a number."""
    return float(value) if isinstance(value, (int, float)) else math.nan


def mean_ci95(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and half-width of its 95 % Student-t confidence interval (NaN half-width for one value)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return mean, math.nan
    df = len(finite) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return mean, t * statistics.stdev(finite) / math.sqrt(len(finite))


def interval(values: Sequence[Any]) -> list[float | None]:
    """:func:`mean_ci95` of the numbers among ``values`` as JSON: ``[mean, half]``, None where undefined."""
    return [v if math.isfinite(v) else None for v in mean_ci95([as_number(v) for v in values])]


def summarise(rows: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    """Per key the :func:`interval` over ``rows`` (one per seed), the number of rows and the rows themselves."""
    return {**{k: interval([row.get(k) for row in rows]) for k in keys}, "seeds": len(rows), "per_seed": list(rows)}


def format_ci(mean: float | None, half: float | None, digits: int = 3) -> str:
    """``mean ± half`` with ``digits`` decimals; ``–`` for a missing value."""
    if mean is None or not math.isfinite(mean):
        return "–"
    if half is None or not math.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A GitHub-markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


class Progress:
    """One line per finished job: ``[run i of n] what (seconds) — about T left`` for the whole set."""

    def __init__(self, total: int, workers: int, echo: Callable[[str], None] = print) -> None:
        self.total, self.workers, self.echo = total, max(1, workers), echo
        self.start, self.done = time.perf_counter(), 0

    def __call__(self, label: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        # Jobs run in rounds of `workers`: time per finished round × rounds still to run.
        left = elapsed / math.ceil(self.done / self.workers) * math.ceil((self.total - self.done) / self.workers)
        self.echo(f"[run {self.done} of {self.total}] {label} done ({elapsed:.0f}s in all, about {left:.0f}s left)")


def _init_worker(threads: int, devices: Any) -> None:
    import torch

    from distar.runtime import quiet_libraries

    if devices is not None:  # before torch initialises CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = devices.get()
    torch.set_num_threads(threads)
    quiet_libraries()


def run_parallel(
    fn: Callable[..., Any],
    jobs: Sequence[Mapping[str, Any]],
    workers: int,
    on_done: Callable[[int, Any], None] | None = None,
    *,
    threads: int = 1,
    devices: Sequence[str] = (),
) -> list[Any]:
    """``[fn(**job) for job in jobs]``, run in ``workers`` spawned processes of ``threads`` torch threads each.

    ``fn`` must be importable (a module-level function). ``on_done(i, result)`` is called in the
    parent as each job finishes; a job's error is raised once the jobs under way finish, and no further
    job starts. Worker k sees only GPU ``devices[k % len(devices)]`` when ``devices`` is given. With
    ``workers`` = 1 and no ``devices`` the jobs run in this process.
    """
    import torch

    results: list[Any] = [None] * len(jobs)
    if workers <= 1 and not devices:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for i, job in enumerate(jobs):
                results[i] = fn(**job)
                if on_done:
                    on_done(i, results[i])
        finally:
            torch.set_num_threads(before)
        return results
    context = multiprocessing.get_context("spawn")
    queue = None
    if devices:
        queue = context.Queue()
        for k in range(workers):
            queue.put(str(devices[k % len(devices)]))
    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the workers as they start
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads, queue)) as pool:
            futures = {pool.submit(fn, **job): i for i, job in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    if on_done:
                        on_done(i, results[i])
            except BaseException:  # a job failed or the parent was interrupted: start no further job
                pool.shutdown(cancel_futures=True)
                raise
    finally:
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp
    return results


@dataclasses.dataclass
class Column:
    """A column of a report table: its heading, what it means and how many decimals its figures get."""

    heading: str = field(help="the column's heading (with its direction, e.g. 'reward ↑')")
    about: str = field("", help="what the figure is: listed under a table that has legend: true")
    digits: int = field(3, help="decimals of a figure (mean ± 95 % half-width, or a number)")


@dataclasses.dataclass
class Section:
    """A part of report.md: markdown text, then (optionally) a table with one row per entry of a named table."""

    text: str = field("", help="markdown; {name} (or {name[key]}) takes the value the report's context gives it")
    table: str | None = field(
        None, help="the table shown after the text: 'points' (one row per grid point) or one the caller gives by name"
    )
    label: str | list[str] = field(
        "point", help="heading of the column that names each row, or a list: one column per part of a row's label (a tuple)"
    )
    columns: list[str] = field([], help="the table's columns: keys of report.columns (default: all of them)")
    legend: bool = field(False, help="list each column's definition (its `about`) under the table")
    needs: str | None = field(
        None, help="a context value or table the section shows only with (e.g. a figure some reports draw): left out without it"
    )


@dataclasses.dataclass
class ReportSpec:
    """What report.md shows after the table of every point: the sections, and the columns their tables use."""

    title: str = field("distar sweep", help="report.md's title")
    columns: dict[str, Column] = field({}, help="metric key → column (heading, definition, decimals), in table order")
    sections: list[Section] = field([], help="report.md's sections after the table of every point, in order")
    sections_from: str = field(
        "", help="the command that gives the sections' tables and values (e.g. 'distar demo --world gmm'): without "
        "them (a plain `distar sweep`) report.md names it instead of showing the sections"
    )

    def render(self, tables: Mapping[str, Mapping[str, Mapping[str, Any]]], context: Mapping[str, Any]) -> list[str]:
        """The sections as markdown lines. ``tables`` holds each named table's rows (row label → figures: a
        ``[mean, half-width]`` pair, a number or text per column key; a tuple label fills one column per part,
        numbers in their shortest form); ``context`` fills the texts' fields."""
        lines: list[str] = []
        for section in self.sections:
            if section.needs is not None and section.needs not in context and section.needs not in tables:
                continue
            if section.text:
                lines += section.text.format_map(context).removesuffix("\n").split("\n")
            if section.table is None:
                continue
            if section.table not in tables:
                raise UserError(f"report: no table named {section.table!r} (tables: {', '.join(tables)})")
            keys = section.columns or list(self.columns)
            unknown = [k for k in keys if k not in self.columns]
            if unknown:
                raise UserError(f"report: the table {section.table!r} names the column {unknown[0]!r}, not in report.columns")
            columns = [self.columns[k] for k in keys]
            labels = [section.label] if isinstance(section.label, str) else section.label
            lines += markdown_table(
                [*labels, *(c.heading for c in columns)],
                [
                    [*map(_value, label if isinstance(label, tuple) else (label,)), *(_figure(row.get(k), c.digits) for k, c in zip(keys, columns))]
                    for label, row in tables[section.table].items()
                ],
            )
            if section.legend:
                lines += ["", *(f"- **{c.heading}**: {c.about}." for c in columns if c.about)]
        return lines


def _figure(value: Any, digits: int) -> str:
    """A table cell: ``mean ± half`` for a ``[mean, half]`` pair, a number to ``digits`` decimals, text as it is."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return format_ci(*value, digits=digits)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_ci(value, None, digits=digits)
    return "–" if value is None else str(value)


@dataclasses.dataclass
class SweepConfig:
    """A sweep: the base config, the grid, the seeds, what runs each point and how many in parallel."""

    config: str | None = field(None, help="base config YAML of every run (the runner's config; default runner: a TrainConfig)")
    overrides: list[str] = field([], help="key=value overrides of the base config, for every run")
    grid: list[dict[str, list[Any]]] = field(
        [], help="products of key → values: each is every combination of its keys' values; the points of all, once each"
    )
    seeds: int = field(1, help="seeds per grid point (the intervals are over these)")
    seed_key: str = field("seed", help="config key that seed i offsets")
    seed_stride: int = field(1, help="seed i sets seed_key to its base value + seed_stride × i")
    runner: str = field("distar.sweep:train", help="module:function(data, folder) -> metrics that runs one point")
    evaluate: str | None = field(None, help="module:function(data, folder) -> metrics added to each run's (e.g. a world's evaluator)")
    identity: str | None = field(
        None, help="module:function(data) -> what the runner trains: points of equal identity share one training, "
        "each evaluated on it (default: the whole config)"
    )
    metrics: list[str] = field([], help="metrics in report.md and metrics.png (default: every numeric one)")
    report: ReportSpec = field(ReportSpec(), help="report.md's title and sections after the table of every point")
    jobs: int = field(1, help="parallel worker processes (1: the runs go one after another in this process)")
    threads: int = field(1, help="torch threads per worker process")
    devices: list[str] = field([], help="GPU ids; worker k runs with CUDA_VISIBLE_DEVICES = devices[k mod len]")

    def __post_init__(self) -> None:
        if min(self.seeds, self.jobs, self.threads) < 1:
            raise ConfigError("seeds, jobs and threads must be >= 1")
        for spec in (self.runner, self.evaluate, self.identity):
            if spec is not None and not re.fullmatch(r"[\w.]+:\w+", spec):
                raise ConfigError(f"{spec!r} is not module:function")
        for axes in self.grid:
            for key, values in axes.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"grid: {key} needs a non-empty list of values")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: a grid point (overrides) at seed index ``seed``, its folder name and full config."""

    name: str
    point: dict[str, Any]
    seed: int
    data: dict[str, Any]


def load_function(spec: str) -> Callable[..., Any]:
    """The function named ``module:function``."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"cannot load {spec!r}: {err}") from None


def _get(data: Any, key: str) -> Any:
    """The value at dotted ``key`` of a nested dict, or None."""
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def _slug(point: Mapping[str, Any]) -> str:
    parts = [f"{key.split('.')[-1]}-{json.dumps(v) if isinstance(v, (list, dict)) else v}" for key, v in point.items()]
    return re.sub(r"[^\w.=-]+", "", "_".join(parts))[:100] or "base"


def base_data(sweep: SweepConfig) -> dict[str, Any]:
    """The base config as a nested dict: the YAML file (if any) with the overrides applied."""
    return apply_overrides(read_config_file(sweep.config) if sweep.config else {}, sweep.overrides)


def packaged_sweep(
    sweep_file: Path, base_file: Path, values: Mapping[str, Any], keys: Mapping[str, Sequence[str]], **spec: Any
) -> tuple[SweepConfig, dict[str, Any]]:
    """A packaged sweep file and its base config file with a demo's flat settings set in them.

    Each ``keys`` entry maps a key of ``values`` (dotted: into its sections) to the keys it sets: base-config
    keys, or ``sweep:<field>`` for a field of the sweep. ``spec`` then sets fields of the sweep (e.g. its
    grid); a ``jobs`` of None is one per CPU core. The base config comes back apart (``config`` is None).
    """
    sweep, base = read_config_file(sweep_file), read_config_file(base_file)
    for key, targets in keys.items():
        value = values
        for part in key.split("."):
            value = value[part]
        for target in targets:
            if target.startswith("sweep:"):
                sweep[target.removeprefix("sweep:")] = value
            else:
                set_key(base, target, value)
    sweep.update(spec, config=None)
    sweep["jobs"] = sweep.get("jobs", 1) or os.cpu_count() or 1
    return from_dict(SweepConfig, sweep), base


def points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """The grid's points in order, each once (no grid: the base config alone)."""
    out: list[dict[str, Any]] = []
    for axes in sweep.grid or [{}]:
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values))
            if point not in out:
                out.append(point)
    return out


def plan(sweep: SweepConfig, base: Mapping[str, Any]) -> list[Run]:
    """Every point × seed as a :class:`Run`, point-major; run names are unique and folder-safe."""
    runs, names = [], set()
    start = _get(base, sweep.seed_key) or 0
    if not isinstance(start, int):
        raise ConfigError(f"{sweep.seed_key}: the seed key must hold an integer, not {start!r}")
    for index, point in enumerate(points(sweep)):
        slug = _slug(point)
        slug = slug if slug not in names else f"{slug}-{index}"
        names.add(slug)
        for seed in range(sweep.seeds):
            data = copy.deepcopy(dict(base))
            for key, value in point.items():
                set_key(data, key, value)
            set_key(data, sweep.seed_key, start + sweep.seed_stride * seed)
            runs.append(Run(f"{slug}_s{seed}", point, seed, data))
    return runs


def execute(runner: str, evaluate: str | None, data: dict[str, Any], folder: str, results: list[tuple[dict[str, Any], str]]) -> None:
    """One training, in a worker: ``runner(data, folder)``, then for each (point data, path) of ``results``
    its metrics (the runner's and ``evaluate(point data, folder)``'s) written atomically to the path as JSON."""
    trained = dict(load_function(runner)(data, Path(folder)))
    for point_data, path in results:
        metrics = {**trained, **(load_function(evaluate)(point_data, Path(folder)) if evaluate else {})}
        _write(Path(path), json.dumps(metrics, default=float) + "\n")


def train(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The default runner: train the :class:`~distar.train.TrainConfig` ``data`` in ``folder``, continuing
    from its newest checkpoint if it holds one; the metrics are the last ``log.jsonl`` record."""
    from distar.train.build import build_trainer
    from distar.train.checkpoint import LOG_FILE
    from distar.train.config import TrainConfig
    from distar.train.logs import JsonlLog

    config = from_dict(TrainConfig, {**data, "output_dir": str(folder)})
    build_trainer(config).train(resume="latest")
    records = JsonlLog(folder / LOG_FILE).read()
    return records[-1] if records else {}


def _state(sweep: SweepConfig, runs: Sequence[Run], folders: Mapping[str, str], done: set[str]) -> str:
    rows = [
        {"name": r.name, "point": r.point, "seed": r.seed, "folder": folders[r.name], "status": "done" if r.name in done else "pending"}
        for r in runs
    ]
    return json.dumps({"sweep": dataclasses.asdict(sweep), "runs": rows, "data": [r.data for r in runs]}, indent=1) + "\n"


def _check_same_plan(path: Path, runs: Sequence[Run]) -> None:
    """Refuse a folder holding another sweep: resuming must mean the same runs with the same configs."""
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    if [(r["name"], d) for r, d in zip(before["runs"], before["data"])] != [(r.name, r.data) for r in runs]:
        raise UserError(f"{path.parent} holds another sweep (other runs or configs): choose another output folder")


def trainings(sweep: SweepConfig, runs: Sequence[Run]) -> dict[str, list[Run]]:
    """The runs grouped by what they train (``sweep.identity``), keyed by the folder name of the training
    (its first run's name)."""
    identity = load_function(sweep.identity) if sweep.identity else (lambda data: data)
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(json.dumps(identity(run.data), sort_keys=True, default=str), []).append(run)
    return {group[0].name: group for group in groups.values()}


def run_sweep(
    sweep: SweepConfig, out: str | Path, *, base: Mapping[str, Any] | None = None, echo: Callable[[str], None] = print
) -> list[Run]:
    """Run every training of the sweep not finished already into ``out``; returns the plan.

    ``out/sweep.json`` records the plan and each run's status (written atomically after each training);
    ``out/runs/<name>`` is a training's folder, ``out/results/<run>.json`` a run's metrics. A run's error
    ends the sweep once the trainings under way finish; rerunning it resumes.
    """
    out = Path(out)
    base = base_data(sweep) if base is None else base
    runs = plan(sweep, base)
    groups = trainings(sweep, runs)
    folders = {r.name: name for name, group in groups.items() for r in group}
    (out / "results").mkdir(parents=True, exist_ok=True)
    state = out / STATE_FILE
    _check_same_plan(state, runs)
    done = {r.name for r in runs if (out / "results" / f"{r.name}.json").is_file()}
    _write(state, _state(sweep, runs, folders, done))
    todo = [name for name, group in groups.items() if any(r.name not in done for r in group)]
    workers = min(sweep.jobs, max(1, len(todo)))
    echo(
        f"sweep: {len(runs)} runs, {len(groups)} trainings ({len(groups) - len(todo)} finished already), "
        f"{workers} in parallel, {sweep.threads} torch thread(s) each"
    )
    progress = Progress(len(todo), workers, echo)

    def finished(i: int, _: Any) -> None:
        done.update(r.name for r in groups[todo[i]])
        _write(state, _state(sweep, runs, folders, done))
        progress(todo[i])

    jobs = [
        {"runner": sweep.runner, "evaluate": sweep.evaluate, "data": groups[name][0].data, "folder": str(out / "runs" / name),
         "results": [(r.data, str(out / "results" / f"{r.name}.json")) for r in groups[name]]}
        for name in todo
    ]  # fmt: skip
    run_parallel(execute, jobs, workers, finished, threads=sweep.threads, devices=sweep.devices)
    return runs


def collect(out: str | Path) -> dict[str, Any]:
    """Every finished run's metrics by grid point: per point the per-seed metrics and, for each numeric
    metric, ``[mean, half-width]`` of the 95 % Student-t interval over seeds."""
    out = Path(out)
    state = json.loads((out / STATE_FILE).read_text())
    grouped: dict[str, dict[str, Any]] = {}
    for run in state["runs"]:
        path = out / "results" / f"{run['name']}.json"
        if not path.is_file():
            continue
        entry = grouped.setdefault(json.dumps(run["point"], sort_keys=True), {"point": run["point"], "runs": [], "folders": [], "per_seed": []})
        entry["runs"].append(run["name"])
        entry["folders"].append(run["folder"])
        entry["per_seed"].append(json.loads(path.read_text()))
    for entry in grouped.values():
        keys = dict.fromkeys(k for row in entry["per_seed"] for k, v in row.items() if math.isfinite(as_number(v)))
        entry["seeds"] = len(entry["per_seed"])
        entry["metrics"] = {k: interval([row.get(k) for row in entry["per_seed"]]) for k in keys}
    return {"sweep": state["sweep"], "points": list(grouped.values())}


def write_report(
    out: str | Path,
    results: Mapping[str, Any],
    *,
    tables: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    context: Mapping[str, Any] | None = None,
) -> str:
    """``results.json``, ``metrics.png`` and ``report.md`` in ``out``; returns the markdown.

    report.md has the sweep's ``report.title``, the grid and one row per point with mean ± 95 % interval of
    each metric, the plot, then the sections of the sweep's ``report`` (:class:`ReportSpec`), whose tables
    are ``points`` (each point's intervals, named by its values) and ``tables``, and whose texts are filled
    from ``context`` and ``sweep`` (the sweep's settings); with no ``tables`` and a ``report.sections_from``,
    a line naming that command instead of the sections.
    """
    out = Path(out)
    sweep, pts = results["sweep"], results["points"]
    spec = from_dict(ReportSpec, sweep.get("report") or {}, prefix="report.")
    _write(out / RESULTS_FILE, json.dumps(results, indent=1, default=float) + "\n")
    keys = sweep["metrics"] or list(dict.fromkeys(k for p in pts for k in p["metrics"]))
    axes = list(dict.fromkeys(k for p in pts for k in p["point"]))
    plot_metrics(pts, axes, keys, out / PLOT_FILE)
    named = {", ".join(f"{a}={_value(v)}" for a, v in p["point"].items()) or "base": p["metrics"] for p in pts}
    lines = [
        f"# {spec.title}",
        "",
        f"Base config: {sweep['config'] or 'given by the caller'} {' '.join(sweep['overrides'])} (each run's in "
        f"{STATE_FILE}); {sweep['seeds']} seed(s) per "
        f"point ({sweep['seed_key']} + {sweep['seed_stride']}·i); runner {sweep['runner']}"
        + (f", evaluation {sweep['evaluate']}" if sweep["evaluate"] else "") + ".",
        "",
        "Every figure is the mean ± 95 % interval (Student t) over the seeds of its point.",
        "",
        *markdown_table(
            [*axes, "seeds", *keys],
            [[*(_value(p["point"].get(a, "")) for a in axes), p["seeds"], *(_cell(*p["metrics"].get(k, [None, None])) for k in keys)] for p in pts],
        ),
        "",
        f"![metrics]({PLOT_FILE})",
        "",
        *(
            [f"The sections of this report come from `{spec.sections_from}`, which gives their tables and values."]
            if spec.sections_from and tables is None
            else spec.render({"points": named, **(tables or {})}, {"sweep": sweep, **(context or {})})
        ),
    ]
    text = "\n".join(lines) + "\n"
    _write(out / REPORT_FILE, text)
    return text


def _value(value: Any) -> str:
    """A grid value as the report shows it: numbers in their shortest form (3.0 → 3)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cell(mean: float | None, half: float | None) -> str:
    """``mean ± half`` to 4 significant digits (2 for the half-width); ``–`` for a missing value."""
    if mean is None:
        return "–"
    return f"{mean:.4g}" if half is None else f"{mean:.4g} ± {half:.2g}"


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_metrics(pts: Sequence[Mapping[str, Any]], axes: Sequence[str], keys: Sequence[str], path: Path) -> None:
    """One panel per metric against the first grid key with numbers in several points (the points
    without it are left out), one line per combination of the other keys, error bars the 95 %
    intervals; with no such key, every point against its index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = next((a for a in axes if sum(_numeric(p["point"].get(a)) for p in pts) > 1), None)
    shown = [p for p in pts if x_key is None or _numeric(p["point"].get(x_key))]
    cols = min(3, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, grid = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(grid.flat, keys):
        lines: dict[str, list[tuple[float, float, float]]] = {}
        for i, p in enumerate(shown):
            mean, half = p["metrics"].get(key, [None, None])
            if mean is None:
                continue
            label = ", ".join(f"{a.split('.')[-1]}={_value(v)}" for a, v in p["point"].items() if a != x_key)
            x = float(p["point"][x_key]) if x_key else float(i)
            lines.setdefault(label if x_key else "", []).append((x, mean, 0.0 if half is None else half))
        for label, values in lines.items():
            xs, ys, hs = zip(*sorted(values))
            ax.errorbar(xs, ys, yerr=hs, marker="o", capsize=3, label=label or None, linestyle="-" if x_key else "none")
        ax.set_title(key, fontsize=9)
        if x_key:
            ax.set_xlabel(x_key, fontsize=8)
        else:
            names = [", ".join(f"{a.split('.')[-1]}={_value(v)}" for a, v in p["point"].items()) for p in shown]
            ax.set_xticks(range(len(shown)), names, rotation=90, fontsize=6)
        if ax is grid.flat[0] and any(lines):
            ax.legend(fontsize=6)
    for ax in list(grid.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pareto(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    path: Path,
    *,
    y: tuple[str, str],
    xs: Sequence[tuple[str, str]],
    reference: Mapping[str, Any] | None = None,
    title: str = "",
) -> None:
    """One panel per ``xs`` (key, label): metric ``y`` against it, one line per series over α.

    Each point holds ``alpha`` and, per metric, ``[mean, 95 % half-width]`` (a missing half-width draws no
    bar); ``reference``, if given, is one more point drawn as a star.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def stat(p: Mapping[str, Any], key: str) -> tuple[float, float]:
        mean, half = p[key]
        return float(mean), 0.0 if half is None or not math.isfinite(half) else float(half)

    fig, axes = plt.subplots(1, len(xs), figsize=(4.8 * len(xs), 4), squeeze=False)
    for ax, (x_key, x_label) in zip(axes[0], xs):
        for i, (name, points) in enumerate(series.items()):
            points = sorted(points, key=lambda p: float(p["alpha"]))
            (px, xerr), (py, yerr) = (zip(*(stat(p, k) for p in points)) for k in (x_key, y[0]))
            ax.errorbar(px, py, xerr=xerr, yerr=yerr, marker="o", ms=4, capsize=2, color=f"C{i}", label=name)
            for p, a, b in zip(points, px, py):
                ax.annotate(f"α={float(p['alpha']):g}", (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if reference is not None:
            (a, xerr), (b, yerr) = stat(reference, x_key), stat(reference, y[0])
            ax.errorbar([a], [b], xerr=[xerr], yerr=[yerr], marker="*", color="k", ms=10, ls="", label="reference")
        ax.set(xlabel=x_label, ylabel=y[1])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
