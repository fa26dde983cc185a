"""The gmm world's reward r(x, c) of Eq. (3.1): a Gaussian bump on one mode of each prompt.

    r(x, c) = exp(−‖x − m_c‖² / (2 ℓ²)) ∈ (0, 1]

m_c is the location of prompt c's mode ``reward_mode`` (by default its lightest mode, weight 0.1), ℓ
is ``reward_width``. The reward thus favours a low-probability mode of the reference: maximising it
alone collapses each prompt onto one mode, and regularisation decides how much of the rest survives.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from distar.rewards.base import Reward
from distar.worlds.gmm.world import GMMWorld


class GMMBumpReward(Reward):
    """r(x, c) for points x (B, d) — the world's "images" — and prompt strings; differentiable in x."""

    name = "gmm_bump"

    def __init__(self, world: GMMWorld) -> None:
        super().__init__()
        self.world = world
        self.register_buffer("centres", world.reward_centres.clone())  # (C, d)
        self.width = world.config.reward_width
        self.freeze()

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """(B,) rewards in (0, 1] for points ``images`` (B, d)."""
        centre = self.centres[self.world.prompt_index(prompts)]
        return (-(images - centre).pow(2).sum(-1) / (2 * self.width**2)).exp()
