"""The sweep harness on the gmm world: plan, parallel one-thread runs, shared trainings, resume after
a kill, and the report with intervals over seeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distar.cli import main
from distar.config import ConfigError, from_dict
from distar.errors import UserError
from distar.sweep import Column, ReportSpec, Section, SweepConfig, collect, mean_ci95, packaged_sweep, plan, run_sweep, trainings
from distar.worlds.gmm.demo import BASE_FILE

#: The gmm world as a sweep on the demo's base config, tiny: networks and budgets of seconds per run.
SWEEP = """
runner: distar.worlds.gmm.demo:train
evaluate: distar.worlds.gmm.demo:evaluate
identity: distar.worlds.gmm.demo:identity
seed_key: seed
seed_stride: 1000
seeds: 2
report:
  title: gmm sweep
  columns:
    reward: {heading: reward ↑, about: mean bump reward, digits: 2}
  sections:
    - text: "## By point ({sweep[seeds]} seeds)\\n"
      table: points
      legend: true
"""
TINY = [
    "loop.max_steps=3", "logging.every=1", "gmm.distill_steps=10", "data.batch_size=32", "gmm.eval_samples=40",
    "gmm.tilted_pool=400", "gmm.net.hidden=8",
]  # fmt: skip
#: sim ignores α: its two points are one training per seed (3 trainings per seed in all).
GRID = ["--grid", "objective.preset=[sim, di_star]", "--grid", "objective.reward_scale=[1.0, 3.0]"]


def _files(tmp_path: Path) -> list[str]:
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return ["--sweep", str(tmp_path / "sweep.yaml"), "--config", str(BASE_FILE), *GRID, *TINY]


def _figures(out: Path) -> dict[str, dict]:
    """Every run's metrics but its wall time."""
    return {
        p.stem: {k: v for k, v in json.loads(p.read_text()).items() if k != "train_seconds"}
        for p in sorted((out / "results").glob("*.json"))
    }


def test_plan_unions_products_once_each_and_offsets_seeds() -> None:
    sweep = SweepConfig(
        grid=[{"a.x": [1, 2], "b": ["u"]}, {"a.x": [1], "b": ["u"]}, {"c": [0.5]}], seeds=2, seed_key="train.seed", seed_stride=10
    )
    runs = plan(sweep, {"train": {"seed": 3}, "a": {"y": 0}})
    assert [r.point for r in runs[::2]] == [{"a.x": 1, "b": "u"}, {"a.x": 2, "b": "u"}, {"c": 0.5}]
    assert len({r.name for r in runs}) == 6
    assert [r.data["train"]["seed"] for r in runs[:2]] == [3, 13] and [r.seed for r in runs[:2]] == [0, 1]
    assert runs[2].data == {"train": {"seed": 3}, "a": {"x": 2, "y": 0}, "b": "u"}
    assert len(trainings(sweep, runs)) == 6  # no identity: every distinct config is its own training
    with pytest.raises(ConfigError, match="integer"):
        plan(SweepConfig(seed_key="a"), {"a": "x"})
    for bad in ({"seeds": 0}, {"runner": "no_colon"}, {"grid": [{"a": []}]}):
        with pytest.raises(ConfigError):
            SweepConfig(**bad)


def test_a_packaged_sweep_takes_flat_settings_at_their_keys(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text("config: b.yaml\nseeds: 2\njobs: 3\nmetrics: [loss]\n")
    (tmp_path / "b.yaml").write_text("loop:\n  max_steps: 10\nseed: 0\nw:\n  a: 1\n")
    keys = {"steps": ["loop.max_steps"], "w.a": ["w.a", "w.b"], "n": ["sweep:seeds"], "jobs": ["sweep:jobs"]}
    values = {"steps": 5, "w": {"a": 7}, "n": 4, "jobs": 2, "unused": 1}
    sweep, base = packaged_sweep(tmp_path / "s.yaml", tmp_path / "b.yaml", values, keys, grid=[{"seed": [1, 2]}])
    assert base == {"loop": {"max_steps": 5}, "seed": 0, "w": {"a": 7, "b": 7}}
    assert sweep == SweepConfig(config=None, seeds=4, jobs=2, metrics=["loss"], grid=[{"seed": [1, 2]}])
    sweep, _ = packaged_sweep(tmp_path / "s.yaml", tmp_path / "b.yaml", {**values, "jobs": None}, keys)
    assert sweep.jobs == (os.cpu_count() or 1) and sweep.grid == []


def test_a_report_spec_renders_texts_and_named_tables_with_their_columns() -> None:
    spec = from_dict(ReportSpec, {
        "columns": {"r": {"heading": "r ↑", "about": "the reward", "digits": 2}, "n": {"heading": "n", "digits": 0},
                    "note": {"heading": "note"}},
        "sections": [{"text": "## {name}\n\nfor {who[first]}\n"}, {"table": "rows", "label": "model", "legend": True},
                     {"table": "rows", "columns": ["note"]}],
    })  # fmt: skip
    rows = {"a": {"r": [0.123, 0.05], "n": 4, "note": "ok"}, "b": {"r": [0.5, None]}}
    lines = spec.render({"rows": rows}, {"name": "Results", "who": {"first": "you"}})
    assert lines[:3] == ["## Results", "", "for you"]
    assert lines[3:7] == ["| model | r ↑ | n | note |", "|---|---|---|---|", "| a | 0.12 ± 0.05 | 4 | ok |", "| b | 0.50 | – | – |"]
    assert lines[7:9] == ["", "- **r ↑**: the reward."] and lines[-1] == "| b | – |"
    two = ReportSpec(columns={"r": Column("r")}, sections=[Section(table="rows", label=["method", "α"])])
    assert two.render({"rows": {("a", 0.0): {"r": 1.0}, ("a", 10.0): {}}}, {})[2:] == ["| a | 0 | 1.000 |", "| a | 10 | – |"]
    optional = ReportSpec(sections=[Section(text="a\n"), Section(text="{figure}\n", needs="figure"), Section(table="more", needs="more")])
    assert optional.render({}, {}) == ["a"] and optional.render({}, {"figure": "f.png"}) == ["a", "f.png"]
    with pytest.raises(UserError, match="no table named 'other'"):
        ReportSpec(sections=[Section(table="other")]).render({"rows": rows}, {})
    with pytest.raises(UserError, match="column 'x'"):
        ReportSpec(sections=[Section(table="rows", columns=["x"])]).render({"rows": rows}, {})
    with pytest.raises(ConfigError, match="report.columns.r.digits"):
        from_dict(ReportSpec, {"columns": {"r": {"heading": "r", "digits": "two"}}}, prefix="report.")


def test_sweep_reports_intervals_and_skips_finished_runs(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["sweep", *_files(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    assert "sweep: 8 runs, 6 trainings (0 finished already)" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert len(results["points"]) == 4 and all(p["seeds"] == 2 for p in results["points"])
    for point in results["points"]:
        for key in ("reward", "mode_coverage", "energy_distance_tilted", "train_seconds"):
            assert point["metrics"][key] == list(mean_ci95([row[key] for row in point["per_seed"]])), key
    sims = [p for p in results["points"] if p["point"]["objective.preset"] == "sim"]
    assert sims[0]["folders"] == sims[1]["folders"]  # one training, evaluated at each α
    assert sims[0]["per_seed"][0]["reward"] == sims[1]["per_seed"][0]["reward"]
    assert sims[0]["metrics"]["energy_distance_tilted"] != sims[1]["metrics"]["energy_distance_tilted"]
    text = (out / "report.md").read_text()
    assert "| objective.preset | objective.reward_scale | seeds |" in text and " ± " in text
    assert text.startswith("# gmm sweep\n") and "## By point (2 seeds)\n| point | reward ↑ |" in text
    mean, half = results["points"][0]["metrics"]["reward"]
    assert f"| objective.preset=sim, objective.reward_scale=1 | {mean:.2f} ± {half:.2f} |" in text
    assert "- **reward ↑**: mean bump reward." in text
    assert (out / "metrics.png").is_file()
    state = json.loads((out / "sweep.json").read_text())
    assert {r["status"] for r in state["runs"]} == {"done"}
    before = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    assert main(["sweep", *_files(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    assert "(6 finished already)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()} == before
    with pytest.raises(UserError, match="another sweep"):
        run_sweep(SweepConfig(seeds=3, runner="distar.worlds.gmm.demo:train"), out, base={})


@pytest.mark.slow  # three sweeps, one of them two spawned worker processes
def test_a_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path) -> None:
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    files = _files(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "distar", "sweep", *files, "--out", str(killed), "--jobs", "2"]
    sweep = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while len(list((killed / "results").glob("*.json"))) < 2:
        assert sweep.poll() is None, sweep.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    finished = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (killed / "results").glob("*.json")}
    assert 2 <= len(finished) < 8
    assert main(["sweep", *files, "--out", str(killed), "--jobs", "1"]) == 0
    assert {name: (killed / "results" / name).stat().st_mtime_ns for name in finished} == {n: t for n, (t, _) in finished.items()}
    assert main(["sweep", *files, "--out", str(whole), "--jobs", "1"]) == 0
    assert _figures(killed) == _figures(whole) and len(_figures(whole)) == 8
    assert collect(killed)["points"][0]["metrics"]["reward"] == collect(whole)["points"][0]["metrics"]["reward"]


def test_a_failed_run_stops_the_sweep_and_a_rerun_finishes_it(tmp_path) -> None:
    sweep = SweepConfig(grid=[{"x": [1, 2, 3]}], runner="sweep_helpers:probe")
    with pytest.raises(ValueError, match="x=2 failed"):
        run_sweep(sweep, tmp_path, base={"fail": 2}, echo=lambda _: None)
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["x-1_s0.json"]
    state = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["status"] for r in state["runs"]] == ["done", "pending", "pending"]
    with pytest.raises(UserError, match="another sweep"):  # the same runs, but other configs
        run_sweep(sweep, tmp_path, base={"fail": 0}, echo=lambda _: None)


def test_workers_run_one_thread_each_on_their_own_device(tmp_path) -> None:
    sweep = SweepConfig(grid=[{"x": [1, 2, 3, 4]}], seeds=2, runner="sweep_helpers:probe", jobs=2, devices=["5", "7"])
    run_sweep(sweep, tmp_path, base={"seed": 10}, echo=lambda _: None)
    rows = [row for point in collect(tmp_path)["points"] for row in point["per_seed"]]
    assert sorted((row["x"], row["seed"]) for row in rows) == [(x, s) for x in (1, 2, 3, 4) for s in (10, 11)]
    assert {row["threads"] for row in rows} == {1} and {row["omp"] for row in rows} == {"1"}
    devices = {(row["pid"], row["device"]) for row in rows}
    assert len(devices) == len({pid for pid, _ in devices})  # one device per worker, for all its runs
    assert {device for _, device in devices} <= {"5", "7"} and os.getpid() not in {pid for pid, _ in devices}
