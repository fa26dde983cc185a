"""Shared fixtures of the gmm-world tests: small Trainer configs over the world's backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distar.objectives import ObjectiveConfig
from distar.train import (
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    LoopConfig,
    OptimConfig,
    OptimizerConfig,
    TrainConfig,
)
from distar.worlds.gmm import GMMBackend, GMMWorld, energy_distance


def _train_config(objective: ObjectiveConfig, out: Path, steps: int, lr: float, prompts: list[str]) -> TrainConfig:
    opt = OptimizerConfig(lr=lr, weight_decay=0.0, lr_schedule="constant", max_grad_norm=None)
    return TrainConfig(
        objective=objective,
        data=DataConfig(prompts=prompts, batch_size=128),
        optim=OptimConfig(generator=opt, assistant=OptimizerConfig(lr=1e-3, weight_decay=0.0, lr_schedule="constant")),
        loop=LoopConfig(max_steps=steps, cpu=True),
        checkpointing=CheckpointConfig(save_final=False),
        logging=LoggingConfig(every=steps, report_to="none", progress_bar=False),
        output_dir=str(out),
        seed=0,
    )


@torch.no_grad()
def _generator_samples(backend: GMMBackend, n: int = 500, seed: int = 123) -> list[torch.Tensor]:
    """n samples per prompt from fixed latents."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(backend.world.num_prompts):
        z = backend.sample_latents(n, generator=g)
        out.append(backend.generate(z, torch.full((n,), c, dtype=torch.long)))
    return out


def _mean_energy_distance(world: GMMWorld, samples: list[torch.Tensor], seed: int = 7) -> float:
    g = torch.Generator().manual_seed(seed)
    return sum(energy_distance(x, world.sample(c, len(x), g)) for c, x in enumerate(samples)) / len(samples)


@pytest.fixture
def train_config():
    """``train_config(objective, out, steps, generator_lr, prompts)``: a quiet, checkpoint-free TrainConfig."""
    return _train_config


@pytest.fixture
def generator_samples():
    """``generator_samples(backend, n=500)``: n samples per prompt from fixed latents."""
    return _generator_samples


@pytest.fixture
def mean_energy_distance():
    """``mean_energy_distance(world, samples)``: energy distance to fresh reference draws, prompt mean."""
    return _mean_energy_distance
