"""Classifier-free guidance (docs/math.md §5, Eq. 3.5)."""

from __future__ import annotations

from torch import Tensor


def cfg_combine(cond: Tensor, uncond: Tensor, guidance_scale: float) -> Tensor:
    """Eq. (3.5): s^ω = s(·|∅) + ω (s(·|c) − s(·|∅)).

    The weights sum to one, so the same combination of x0- or ε-predictions gives the x0-/ε-form
    of the guided score at the same x_t.
    """
    return uncond + guidance_scale * (cond - uncond)
