"""``distar demo --world gmm`` end to end on a tiny budget: files, report keys, reproducibility."""

from __future__ import annotations

import argparse
import json

import pytest

from distar.cli import UserError, main
from distar.commands import demo as demo_command
from distar.config import ConfigError
from distar.worlds.gmm.demo import METHODS, GMMDemoConfig, method_objective

TINY = [
    "--steps", "4",
    "distill_steps=20", "batch_size=32", "eval_samples=60", "tilted_pool=600",
    "sweep_reward_scales=[0,3]", "net.hidden=16",
]  # fmt: skip

METRICS = {"reward", "mode_coverage", "mode_entropy", "energy_distance_ref", "energy_distance_tilted", "train_seconds"}


def _numbers(report: dict) -> dict:
    """Everything but timings and machine load."""
    methods = {m: {k: v for k, v in row.items() if k != "train_seconds"} for m, row in report["methods"].items()}
    return {"methods": methods, "sweep": report["sweep"]}


def test_demo_writes_report_and_is_reproducible(tmp_path) -> None:
    reports = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["demo", "--world", "gmm", "--out", str(out), "--seed", "3", *TINY]) == 0
        for file in ("report.json", "report.md", "samples.png", "pareto.png", "training.png", "config.yaml"):
            assert (out / file).is_file(), file
        reports.append(json.loads((out / "report.json").read_text()))
    report = reports[0]
    assert set(report["methods"]) == {"reference", *METHODS}
    assert report["tilted_target"]["alpha"] == 3.0 and report["tilted_target"]["mode_coverage"] > 0
    for name, row in report["methods"].items():
        assert METRICS <= set(row), name
        assert 0.0 <= row["mode_coverage"] <= 1.0
    assert report["methods"]["reference"]["train_seconds"] is None
    assert report["methods"]["di_star"]["train_seconds"] > 0
    assert {(p["method"], p["alpha"]) for p in report["sweep"]} == {
        ("di_star", 0.0), ("di_star", 3.0), ("di_pp", 0.0), ("di_pp", 3.0)
    }  # fmt: skip
    assert all({"reward", "mode_coverage"} <= set(p) for p in report["sweep"])
    # α = 0 sweep points are the SIM / Diff-Instruct runs themselves.
    sweep = {(p["method"], p["alpha"]): p for p in report["sweep"]}
    assert sweep[("di_star", 0.0)]["reward"] == report["methods"]["sim"]["reward"]
    assert sweep[("di_pp", 3.0)]["reward"] == report["methods"]["di_pp"]["reward"]
    assert report["config"]["seed"] == 3 and report["config"]["steps"] == 4
    assert _numbers(reports[0]) == _numbers(reports[1])
    assert "| di_star |" in (tmp_path / "a" / "report.md").read_text()


def test_demo_config_errors_and_presets() -> None:
    with pytest.raises(ConfigError, match="unknown method"):
        GMMDemoConfig(methods=["dpo"])
    with pytest.raises(ConfigError):
        GMMDemoConfig(steps=0)
    cfg = GMMDemoConfig(reward_scale=2.0, guidance_scale=1.5, cfg_reward_scale=0.5)
    assert method_objective(cfg, "di_star").reward_scale == 2.0
    assert method_objective(cfg, "di_star").guidance_scale == 1.5
    assert method_objective(cfg, "di_pp", reward_scale=7.0).divergence == "ikl"
    assert method_objective(cfg, "di_pp", reward_scale=7.0).reward_scale == 7.0
    assert method_objective(cfg, "sim").reward_scale == 0.0
    out = method_objective(cfg, "di_star_out")
    assert out.cfg_mode == "outer" and out.cfg_reward_scale == 0.5


def test_demo_cli_reports_bad_override(tmp_path, capsys) -> None:
    assert main(["demo", "--world", "gmm", "--out", str(tmp_path), "world.dim=1"]) == 2
    assert "dim" in capsys.readouterr().err


def test_demo_command_names_a_world_without_demo() -> None:
    with pytest.raises(UserError, match="no demo"):
        demo_command.run(argparse.Namespace(world="no_such_world"))
