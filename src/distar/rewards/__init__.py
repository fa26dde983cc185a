"""Reward models r(x0, c) for Eq. (3.1): PickScore, CLIP score, HPSv2/v2.1, ImageReward, LAION aesthetic.

Every model is a frozen :class:`Reward`: ``score(images, prompts)`` takes images (B, 3, H, W) in
[0, 1] and returns (B,) scores, differentiable in the images (training reward) and batched under
``torch.no_grad()`` (evaluation metric). Load them by name with :func:`load_reward`, or a weighted
sum from config sections with :func:`build_reward`.
"""

from __future__ import annotations

import importlib
from typing import Any

from distar.rewards.spec import REWARD_NAMES, TINY, RewardSpec

#: public name → submodule, imported on first use: reading reward specs (the command line) loads no torch.
_HOMES = {"Reward": "base", "WeightedReward": "base", "build_reward": "registry", "load_reward": "registry"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'distar.rewards' has no attribute '{name}'")
    return getattr(importlib.import_module(f"distar.rewards.{_HOMES[name]}"), name)


__all__ = ["REWARD_NAMES", "TINY", "Reward", "RewardSpec", "WeightedReward", "build_reward", "load_reward"]
