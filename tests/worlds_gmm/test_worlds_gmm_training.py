"""Short runs of the project's Trainer in the gmm world: SIM approaches the reference, DI* raises reward."""

from __future__ import annotations

import torch

from distar.objectives import preset, preset_at
from distar.train import Trainer
from distar.worlds.gmm import GMMBackend, GMMBumpReward, GMMWorld, GMMWorldConfig
from distar.worlds.gmm.demo import GMMDemoConfig
from distar.worlds.gmm.distill import distill_assistant, distill_generator, probability_flow_x0
from distar.worlds.gmm.metrics import evaluate_samples


def test_sim_from_scratch_moves_generator_to_reference(
    tmp_path, train_config, generator_samples, mean_energy_distance
) -> None:
    # One mode per prompt, so a from-scratch generator has a single basin to find.
    world = GMMWorld(GMMWorldConfig(mode_weights=[1.0], reward_mode=0, mode_std=0.4))
    backend = GMMBackend(world, seed=0)
    before = mean_energy_distance(world, generator_samples(backend))
    config = train_config(preset("sim", guidance_scale=1.0), tmp_path, steps=150, lr=3e-4, prompts=world.prompts)
    reference_before = {k: v.clone() for k, v in backend.generator.state_dict().items()}
    records = Trainer(config, backend, GMMBumpReward(world), world.prompts).train()
    after = mean_energy_distance(world, generator_samples(backend))
    assert len(records) == 150
    assert any(not torch.equal(v, backend.generator.state_dict()[k]) for k, v in reference_before.items())
    assert after < 0.3 * before, (before, after)


def test_di_star_raises_reward_from_distilled_init(tmp_path, train_config, generator_samples) -> None:
    world = GMMWorld()
    reward = GMMBumpReward(world)
    backend = GMMBackend(world, seed=0)
    torch.manual_seed(0)
    distill_generator(backend, steps=300, batch_size=256, lr=1e-3, pairs_per_prompt=1024, ode_steps=32)
    distill_assistant(backend, steps=300, batch_size=256, lr=1e-3)

    def mean_reward() -> float:
        scores = [reward.score(x, [world.prompts[c]] * len(x)) for c, x in enumerate(generator_samples(backend))]
        return float(torch.cat(scores).mean())

    before = mean_reward()
    objective = preset_at("di_star", reward_scale=3.0, guidance_scale=GMMDemoConfig().guidance_scale)
    assert objective.divergence == "pseudo_huber" and objective.reward_scale == 3.0
    config = train_config(objective, tmp_path, steps=150, lr=1e-3, prompts=world.prompts)
    Trainer(config, backend, reward, world.prompts).train()
    after = mean_reward()
    assert after > before + 0.1, (before, after)


def test_distillation_init_covers_every_mode() -> None:
    world = GMMWorld()
    backend = GMMBackend(world, seed=0)
    g = torch.Generator().manual_seed(0)
    # The exact probability-flow ODE itself maps N(0, I) onto the reference.
    z = backend.sample_latents(2000, generator=g)
    ode = [probability_flow_x0(backend, z, torch.full((2000,), c), num_steps=32) for c in range(4)]
    ref = [world.sample(c, 2000, g) for c in range(4)]
    m = evaluate_samples(world, GMMBumpReward(world), ode, ref, ref)
    assert m.mode_coverage == 1.0 and m.energy_distance_ref < 0.02
    for masses in m.mode_masses:
        torch.testing.assert_close(torch.tensor(masses), torch.tensor([0.6, 0.3, 0.1]), atol=0.04, rtol=0)
