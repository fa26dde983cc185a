"""``distar demo --world gmm`` end to end on a tiny budget: intervals over seeds, the c sweep, reproducibility."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from distar.cli import UserError, main
from distar.commands import demo as demo_command
from distar.config import ConfigError, from_dict, read_config_file
from distar.sweep import SweepConfig, mean_ci95
from distar.worlds.gmm.demo import BASE_FILE, METHODS, SWEEP_FILE, GMMDemoConfig, objective, settings, sweep_and_base

TINY = [
    "--steps", "4",
    "distill_steps=20", "batch_size=32", "eval_samples=60", "tilted_pool=600", "net.hidden=16",
    "sweep_reward_scales=[0,3]", "huber_c_sweep=[0.1,1]", "huber_c_reward_scales=[3]", "training_seeds=3",
]  # fmt: skip

COLUMNS = {"reward", "mode_coverage", "mode_entropy", "off_mode_mass", "energy_distance_ref", "energy_distance_tilted"}


def _numbers(report: dict) -> dict:
    """Every figure but timings and machine load."""

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in rows]

    models = {m: strip(s["per_seed"]) for m, s in report["models"].items()}
    return {"models": models, "sweeps": [strip(p["per_seed"]) for p in report["sweep"] + report["huber_c_sweep"]]}


def test_demo_reports_intervals_over_seeds_and_the_c_sweep(tmp_path, monkeypatch) -> None:
    aggregated: list[int] = []

    def spy(values):
        aggregated.append(len(values))
        return mean_ci95(values)

    monkeypatch.setattr("distar.sweep.mean_ci95", spy)
    out = tmp_path / "a"
    assert main(["demo", "--world", "gmm", "--out", str(out), "--seed", "3", *TINY, "jobs=1"]) == 0
    for file in ("report.json", "report.md", "samples.png", "pareto.png", "training.png", "config.yaml"):
        assert (out / file).is_file(), file
    report = json.loads((out / "report.json").read_text())
    assert aggregated and set(aggregated) == {3}  # every figure is aggregated over the 3 seeds
    assert set(report["models"]) == {"reference", "p* (α=3)", *METHODS, "init (distill)"}
    for name, stats in report["models"].items():
        assert stats["seeds"] == 3 and len(stats["per_seed"]) == 3, name
        for key in COLUMNS:
            values = [row[key] for row in stats["per_seed"]]
            assert stats[key] == list(mean_ci95(values)), (name, key)
            assert 0.0 <= stats["mode_coverage"][0] <= 1.0
    # The seeds differ: in the evaluation draws and in training.
    for name in ("reference", "di_star"):
        assert len({row["energy_distance_ref"] for row in report["models"][name]["per_seed"]}) == 3, name
    assert report["models"]["reference"]["train_seconds"] == [None, None]
    assert report["models"]["di_star"]["train_seconds"][0] > 0
    assert {(p["method"], p["alpha"]) for p in report["sweep"]} == {
        ("di_star", 0.0), ("di_star", 3.0), ("di_pp", 0.0), ("di_pp", 3.0)
    }  # fmt: skip
    # Equal objectives are one training: α = 0 points are SIM / Diff-Instruct, c = 0.1 is the preset's c.
    sweep = {(p["method"], p["alpha"]): p for p in report["sweep"]}
    huber = {p["huber_c"]: p for p in report["huber_c_sweep"]}
    assert set(huber) == {0.1, 1.0} and all(p["alpha"] == 3.0 for p in huber.values())
    assert sweep[("di_star", 0.0)]["reward"] == report["models"]["sim"]["reward"]
    assert sweep[("di_pp", 3.0)]["reward"] == report["models"]["di_pp"]["reward"]
    assert huber[0.1]["per_seed"] == report["models"]["di_star"]["per_seed"]
    assert huber[1.0]["reward"] != huber[0.1]["reward"]
    assert report["config"]["seed"] == 3 and report["config"]["steps"] == 4
    text = (out / "report.md").read_text()
    assert "| di_star |" in text and " ± " in text
    assert "## Pseudo-Huber c sweep" in text and "| 3 | 1 |" in text


@pytest.mark.slow  # spawns worker processes, each importing torch and distar
def test_demo_numbers_do_not_depend_on_parallel_jobs(tmp_path) -> None:
    reports = []
    for jobs in (1, 2):
        out = tmp_path / str(jobs)
        args = [*TINY[:-1], "training_seeds=2", "methods=[sim,di_star]", "sweep_methods=[]"]
        assert main(["demo", "--world", "gmm", "--out", str(out), *args, f"jobs={jobs}"]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[0]["run"]["jobs"] == 1 and reports[1]["run"]["jobs"] == 2
    assert _numbers(reports[0]) == _numbers(reports[1])


def test_demo_config_errors_and_presets() -> None:
    with pytest.raises(ConfigError, match="unknown method"):
        GMMDemoConfig(methods=["dpo"])
    with pytest.raises(ConfigError):
        GMMDemoConfig(steps=0)
    with pytest.raises(ConfigError, match="training_seeds"):
        GMMDemoConfig(training_seeds=0)
    with pytest.raises(ConfigError, match="pseudo-Huber"):
        GMMDemoConfig(huber_c_method="di_pp")
    with pytest.raises(ConfigError, match="huber_c_sweep"):
        GMMDemoConfig(huber_c_sweep=[0.0])
    world = {"reward_scale": 2.0, "guidance_scale": 1.5, "cfg_reward_scale": 0.5}

    def at(**point: Any) -> Any:
        return objective({"gmm": world, "objective": point})

    assert (at(preset="di_star").reward_scale, at(preset="di_star").guidance_scale) == (2.0, 1.5)
    assert at(preset="di_star", huber_c=1.0).huber_c == 1.0
    assert at(preset="di_pp", reward_scale=7.0).reward_scale == 7.0
    assert at(preset="sim").reward_scale == 0.0
    assert at(preset="di_star_out").cfg_reward_scale == 0.5


def test_demo_cli_reports_bad_override(tmp_path, capsys) -> None:
    assert main(["demo", "--world", "gmm", "--out", str(tmp_path), "world.dim=1"]) == 2
    assert "dim" in capsys.readouterr().err


def test_demo_command_names_a_world_without_demo() -> None:
    with pytest.raises(UserError, match="no demo"):
        demo_command.run(argparse.Namespace(world="no_such_world"))


def test_the_packaged_sweep_is_the_demo_and_distar_sweep_runs_it(tmp_path) -> None:
    sweep, base = sweep_and_base(GMMDemoConfig(jobs=1))
    packaged_base = read_config_file(BASE_FILE)
    assert {**base, "gmm": settings(base)} == {**packaged_base, "gmm": settings(packaged_base)}
    packaged = from_dict(SweepConfig, {**read_config_file(SWEEP_FILE), "config": None, "jobs": 1})
    assert sweep == packaged
    # `distar sweep` on the packaged files trains and measures what `distar demo` does.
    demo, swept = tmp_path / "demo", tmp_path / "sweep"
    flat = ["distill_steps=10", "batch_size=32", "eval_samples=40", "tilted_pool=400", "net.hidden=8"]
    one = ["methods=[sim]", "sweep_methods=[]", "huber_c_sweep=[]", "training_seeds=1", "jobs=1"]
    assert main(["demo", "--world", "gmm", "--out", str(demo), "--steps", "3", *flat, *one]) == 0
    keys = ["gmm.distill_steps=10", "data.batch_size=32", "gmm.eval_samples=40", "gmm.tilted_pool=400", "gmm.net.hidden=8"]
    assert main([
        "sweep", "--sweep", str(SWEEP_FILE), "--grid", "objective.preset=[sim]", "--seeds", "1", "--out", str(swept),
        "loop.max_steps=3", "logging.every=1", *keys,
    ]) == 0  # fmt: skip
    (row,) = json.loads((demo / "report.json").read_text())["models"]["sim"]["per_seed"]
    (point,) = json.loads((swept / "results.json").read_text())["points"]
    untimed = lambda r: {k: v for k, v in r.items() if k not in ("train_seconds", "reward_curve")}  # noqa: E731
    assert untimed(point["per_seed"][0]) == untimed(row)
    # Without the demo's tables and values, report.md shows the points and names the demo for the rest.
    demo_text, swept_text = ((folder / "report.md").read_text() for folder in (demo, swept))
    assert "## The methods" in demo_text and "## The methods" not in swept_text
    assert swept_text.startswith("# distar demo: gmm world\n") and "| sim | 1 |" in swept_text
    assert swept_text.endswith("come from `distar demo --world gmm`, which gives their tables and values.\n")
