"""Reward models r(x0, c) for Eq. (3.1): PickScore, CLIP score, HPSv2/v2.1, ImageReward, LAION aesthetic.

Every model is a frozen :class:`Reward`: ``score(images, prompts)`` takes images (B, 3, H, W) in
[0, 1] and returns (B,) scores, differentiable in the images (training reward) and batched under
``torch.no_grad()`` (evaluation metric). Load them by name with :func:`load_reward`, or a weighted
sum from config sections with :func:`build_reward`.
"""

from distar.rewards.base import Reward, WeightedReward
from distar.rewards.registry import build_reward, load_reward
from distar.rewards.spec import REWARD_NAMES, TINY, RewardSpec

__all__ = ["REWARD_NAMES", "TINY", "Reward", "RewardSpec", "WeightedReward", "build_reward", "load_reward"]
