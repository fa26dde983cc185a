"""DI* in the shapes world through the project's trainer and evaluation suite."""

from __future__ import annotations

import json

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


def test_demo_writes_the_report(tiny_world, tmp_path):
    from distar.cli import main

    out = tmp_path / "demo"
    argv = [
        "demo", "--world", "shapes", "--out", str(out), "--steps", "1",
        f"models={tiny_world}", "train.batch_size=2", "eval_prompts=4", "seeds=[0, 1]",
        "reference_steps=2", "fid_reference_seeds=2", "threads=1",
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["reference", "one_step_init", "sim", "di_pp", "di_star"]
    for row in report["models"].values():
        for key in ("pickscore", "true_utility", "alignment", "fid", "diversity", "open_diversity", "seconds_per_10_images"):
            assert row[key] is not None, key
    assert (out / "grid.png").is_file() and "Δ utility" in (out / "report.md").read_text()
