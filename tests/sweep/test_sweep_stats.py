"""The sweep harness's seed statistics and progress lines."""

from __future__ import annotations

import math

import pytest

from distar.sweep import Progress, format_ci, mean_ci95


def test_mean_ci95_is_the_student_t_interval():
    mean, half = mean_ci95([1.0, 2.0, 3.0])  # s = 1, n = 3, t_{0.975, 2} = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    mean, half = mean_ci95([5.0, None, float("nan"), 7.0])  # missing and non-finite values are left out
    assert mean == 6.0 and half == pytest.approx(12.706)  # s = √2, n = 2
    assert math.isnan(mean_ci95([4.0])[1]) and math.isnan(mean_ci95([])[0])
    assert mean_ci95([2.0] * 40)[1] == 0.0


def test_format_ci():
    assert format_ci(0.5, 0.0123) == "0.500 ± 0.012"
    assert format_ci(0.5, math.nan, digits=1) == "0.5"
    assert format_ci(math.nan, 1.0) == "–"


def test_progress_counts_parallel_rounds(monkeypatch):
    clock = iter([0.0, 100.0, 101.0, 200.0])
    monkeypatch.setattr("distar.sweep.time.perf_counter", lambda: next(clock))
    lines: list[str] = []
    progress = Progress(total=5, workers=2, echo=lines.append)
    progress("a")  # round 1 of 3 is still running: 100 s a round, two rounds to go after it
    progress("b")
    progress("c")
    assert lines[0] == "[run 1 of 5] a done (100s in all, about 200s left)"
    assert lines[1] == "[run 2 of 5] b done (101s in all, about 202s left)"
    assert lines[2] == "[run 3 of 5] c done (200s in all, about 100s left)"


def test_summarise_gives_each_key_its_interval_over_the_rows():
    from distar.sweep import summarise

    rows = [{"a": 1.0, "b": "x"}, {"a": 2.0}, {"a": 3.0, "b": None}]
    summary = summarise(rows, ["a", "b"])
    assert summary["a"] == list(mean_ci95([1.0, 2.0, 3.0])) and summary["b"] == [None, None]
    assert summary["seeds"] == 3 and summary["per_seed"] == rows


def test_plot_pareto_draws_every_series_and_the_reference(tmp_path):
    from PIL import Image

    from distar.sweep import plot_pareto

    point = lambda alpha, x: {"alpha": alpha, "x": [x, 0.1], "z": [x, None], "y": [2 * x, math.nan]}  # noqa: E731
    path = tmp_path / "pareto.png"
    plot_pareto(
        {"one": [point(3, 0.5), point(1, 0.2)], "two": [point(0, 0.4)]}, path, y=("y", "y"),
        xs=[("x", "x"), ("z", "z")], reference=point(0, 0.3),
    )  # fmt: skip
    with Image.open(path) as image:
        assert image.size[0] > image.size[1] > 0  # two panels side by side
