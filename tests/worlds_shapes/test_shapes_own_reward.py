"""Your own reward in the shapes world: simulated choices exported as preference pairs that
`distar rewards train` reads, and the true utility trained on as a reward plugin."""

from __future__ import annotations

import torch

from distar.io import load_image
from distar.objectives import preset
from distar.rewards import RewardSpec
from distar.rewards.preference import read_pairs
from distar.train import build_trainer
from distar.worlds.shapes.assets import build_record
from distar.worlds.shapes.clip import export_choices, preference_pairs
from distar.worlds.shapes.grammar import sample_prompts
from distar.protocols import BackendModel
from distar.worlds.shapes.one_step import OneStepLoop, train_config
from distar.worlds.shapes.utility import TrueUtility, UtilityWeights


def test_exported_choices_read_back_as_the_simulated_pairs(tmp_path) -> None:
    batches = [preference_pairs(6, seed, UtilityWeights()) for seed in (1, 2)]
    pairs = read_pairs(export_choices(batches, tmp_path, "train.jsonl"))
    assert [p.prompt for p in pairs] == [prompt for b in batches for prompt in b.prompts]
    chose_a = torch.cat([b.choice for b in batches])
    assert [p.label for p in pairs] == [0.0 if c else 1.0 for c in chose_a.tolist()]
    images = torch.stack([load_image(pairs[7].image_0), load_image(pairs[7].image_1)])
    assert (images - torch.stack([batches[1].image_a[1], batches[1].image_b[1]])).abs().max() <= 0.5 / 255 + 1e-6


def test_the_true_utility_as_a_plugin_trains_a_short_di_star_run(shipped, tmp_path) -> None:
    torch.manual_seed(0)
    prompts = sample_prompts(8, seed=7)
    loop = OneStepLoop(steps=6, batch_size=4, generator_lr=2e-4, train_prompts=len(prompts), seed=0)
    config = train_config(
        shipped / "reference", preset("di_star", reward_scale=50.0, guidance_scale=3.0), loop, prompts, tmp_path,
        build_record(shipped)["config"]["one_step"]["t_init"],
        reward=RewardSpec("distar.worlds.shapes.utility:TrueUtility"), generator_init=shipped / "one_step",
        progress_bar=False,
    )
    trainer = build_trainer(config)
    sampler, utility, seeds = BackendModel(trainer.backend, "di_star"), TrueUtility(), list(range(100, 108))

    def true_utility() -> float:
        with torch.no_grad():
            return float(utility.score(sampler.generate_images(prompts, seeds), prompts).mean())

    before = true_utility()
    records = trainer.train()
    assert all("generator/reward" in r for r in records)
    assert true_utility() > before
