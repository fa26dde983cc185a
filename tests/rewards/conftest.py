"""Shared fixtures: tiny reward models written once per session, test images and prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distar.testing.reward_models import save_tiny_reward_models


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{reward name: folder of its tiny model}."""
    return save_tiny_reward_models(tmp_path_factory.mktemp("tiny_rewards"))


@pytest.fixture
def images() -> torch.Tensor:
    """Three non-square RGB images (3, 3, 40, 56) in [0, 1]."""
    return torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def prompts() -> list[str]:
    return ["a red cat on a mat", "two blue squares, centred", "a red cat on a mat"]
