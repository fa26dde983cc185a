"""What the embedded worlds share: seed statistics, parallel one-thread runs, report tables, run records.

A world's demo trains several methods over several training seeds. Each run is an independent,
seeded process with **one torch thread** (small models run fastest that way on a few shared cores,
and a run's numbers then do not depend on how many runs go in parallel); figures are reported as
mean ± half-width of the 95 % Student-t interval over seeds.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

#: Two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal 1.96).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
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


def format_ci(mean: float, half: float, digits: int = 3) -> str:
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


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def run_parallel(
    fn: Callable[..., Any],
    jobs: Sequence[Mapping[str, Any]],
    workers: int,
    on_done: Callable[[int, Any], None] | None = None,
    threads: int = 1,
) -> list[Any]:
    """``[fn(**job) for job in jobs]``, run in ``workers`` spawned processes of ``threads`` torch threads each.

    ``fn`` must be importable (a module-level function). ``on_done(i, result)`` is called in the
    parent as each job finishes. With ``workers`` = 1 the jobs run in this process (at ``threads``).
    """
    results: list[Any] = [None] * len(jobs)
    if workers <= 1:
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
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_set_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, **job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_done:
                on_done(i, results[i])
    return results


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
