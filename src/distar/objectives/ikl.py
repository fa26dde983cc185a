"""Integral-KL baselines: Diff-Instruct, Diff-Instruct++, DMD (di-star-math.md §6)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from distar.diffusion.param import score_from_x0
from distar.objectives.divergences import apply_weight


def ikl_loss(
    x0: Tensor,
    noise: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    fake_x0: Callable[[Tensor], Tensor],
    real_x0: Callable[[Tensor], Tensor],
    weight: Tensor | float | None = None,
    normalize: bool = False,
) -> Tensor:
    """§6: L_IKL = w(t) sg(s_ψ(x_t) − s_ref(x_t))ᵀ x_t, per sample (B,); gradient through x_t only.

    Its θ-gradient is that of ∫ w(t) KL(p_θ,t ‖ p_ref,t) dt (the score-parameter term vanishes in
    expectation). ``normalize=True`` divides each sample by DMD2's mean|x0 − x̂0_ref|.
    """
    x_t = alpha_t * x0 + sigma_t * noise
    with torch.no_grad():
        x_in = x_t.detach()
        real = real_x0(x_in)
        y_t = score_from_x0(x_in, fake_x0(x_in), alpha_t, sigma_t) - score_from_x0(
            x_in, real, alpha_t, sigma_t
        )
    term = (y_t * x_t).flatten(1).sum(dim=1)
    if normalize:
        term = term / dmd2_normalizer(x0, real)
    return apply_weight(term, weight)


def dmd2_normalizer(x0: Tensor, real_x0: Tensor) -> Tensor:
    """DMD2's per-sample normaliser mean|x0 − x̂0_ref| over sample dimensions, shape (B,), detached."""
    return (x0 - real_x0).detach().abs().flatten(1).mean(dim=1).clamp_min(1e-12)
