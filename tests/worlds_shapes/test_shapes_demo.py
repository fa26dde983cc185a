"""DI* in the shapes world through the project's trainer and evaluation suite."""

from __future__ import annotations

import json

import pytest
import torch

from distar.objectives.presets import preset
from distar.rewards import RewardSpec, load_reward
from distar.train.build import build_trainer
from distar.worlds.shapes.assets import build_record
from distar.worlds.shapes.grammar import sample_prompts
from distar.worlds.shapes.one_step import OneStepLoop, OneStepSampler, train_config


def test_short_di_star_run_raises_the_learned_reward(shipped, tmp_path):
    torch.manual_seed(0)
    prompts = sample_prompts(8, seed=7)
    loop = OneStepLoop(steps=6, batch_size=4, generator_lr=2e-4, train_prompts=len(prompts), seed=0)
    config = train_config(
        shipped / "reference",
        preset("di_star", reward_scale=1000.0, guidance_scale=3.0),
        loop,
        prompts,
        tmp_path,
        build_record(shipped)["config"]["one_step"]["t_init"],
        reward=shipped / "reward",
        generator_init=shipped / "one_step",
        progress_bar=False,
    )
    trainer = build_trainer(config)
    reward = load_reward(RewardSpec("pickscore", path=str(shipped / "reward")))
    sampler = OneStepSampler(trainer.backend, "di_star")
    seeds = list(range(100, 100 + len(prompts)))

    def learned_reward() -> float:
        with torch.no_grad():
            return float(reward.score(sampler.generate_images(prompts, seeds), prompts).mean())

    before = learned_reward()
    records = trainer.train()
    after = learned_reward()
    assert len(records) == loop.steps and all(torch.isfinite(torch.tensor(r["generator/loss"])) for r in records)
    assert after > before + 0.005, (before, after)


def test_demo_writes_the_report(tiny_world, tmp_path, capsys):
    from distar.cli import main

    out = tmp_path / "demo"
    argv = [
        "demo", "--world", "shapes", "--out", str(out), "--steps", "1",
        f"models={tiny_world}", "train.batch_size=2", "eval_prompts=4", "seeds=[0, 1]",
        "reference_steps=2", "fid_reference_seeds=2", "training_seeds=2", "jobs=1", "extra=[]",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] == f"report: {(out / 'report.md').resolve()}"
    assert "[run 6 of 6]" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"renders", "reference", "start", "sim_s0", "sim_s1", "di_pp_a30_s0", "di_pp_a30_s1", "di_star_a30_s0", "di_star_a30_s1"}
    for row in report["models"].values():
        for key in ("pickscore", "true_utility", "alignment", "fid", "diversity", "prompt_diversity", "open_diversity"):
            assert row[key] is not None, key
    stats = report["stats"]
    assert list(stats)[:3] == ["renders (ground truth)", "reference (2-step dpm++, CFG 3)", "one-step start"]
    mean, half = stats["DI* (α = 30)"]["pickscore"]
    seeds = [report["models"][f"di_star_a30_s{i}"]["pickscore"] for i in (0, 1)]
    assert abs(mean - sum(seeds) / 2) < 1e-9 and half > 0
    text = (out / "report.md").read_text()
    for heading in ("learned reward ↑", "FID ↓", "s / 10 images ↓", "docs/shapes.md", "Diff-Instruct++ (α = 30)", "steps clipped"):
        assert heading in text, heading
    assert (out / "grid.png").is_file() and (out / "diversity.png").is_file()


def test_runs_are_planned_per_method_scale_and_seed():
    from distar.worlds.shapes.demo import ShapesDemoConfig, plan_runs

    cfg = ShapesDemoConfig(methods=["sim", "di_star"], reward_scale=10.0, sweep=[10.0, 30.0], training_seeds=2, extra=[])
    runs = plan_runs(cfg)
    assert [r.key for r in runs] == ["sim_s0", "sim_s1", "di_star_a10_s0", "di_star_a10_s1", "di_star_a30_s0", "di_star_a30_s1"]
    assert runs[-1].group == "DI* (α = 30)" and runs[0].group == "SIM"
    # extra settings come last, once, and are checked when the config is made
    cfg = ShapesDemoConfig(methods=["sim", "di_star"], reward_scale=10.0, training_seeds=1, extra=["di_star@10", "di_pp@300"])
    assert [r.key for r in plan_runs(cfg)] == ["sim_s0", "di_star_a10_s0", "di_pp_a300_s0"]
    for bad in (["di_star"], ["nope@3"], ["di_star@big"]):
        with pytest.raises(ValueError, match="extra"):
            ShapesDemoConfig(extra=bad)


def test_verdicts_name_reward_hacking():
    from distar.worlds.shapes.demo import START, verdicts

    spread = {"prompt_diversity": (0.3, 0.0)}
    stats = {
        START: {"pickscore": (0.2, 0.0), "true_utility": (-5.0, 0.0), "alignment": (0.8, 0.0), "open_diversity": (0.6, 0.0), **spread},
        "A": {"pickscore": (0.3, 0.01), "true_utility": (-6.0, 0.1), "alignment": (0.8, 0.05), "open_diversity": (0.2, 0.05), **spread},
        "B": {"pickscore": (0.3, 0.01), "true_utility": (-4.0, 0.1), "alignment": (0.81, 0.05), "open_diversity": (0.6, 0.05), **spread},
        "C": {"pickscore": (0.4, 0.01), "true_utility": (-4.0, 0.1), "alignment": (0.3, 0.05), "open_diversity": (0.0, 0.05), "prompt_diversity": (0.05, 0.01)},
    }
    a, b, c = verdicts(stats, ["A", "B", "C"], START)
    assert "reward hacking" in a and "; but open-attribute diversity fell. " in a
    assert "a real gain" in b and "kept" in b and "collapsed" not in b
    assert "**collapsed**" in c
