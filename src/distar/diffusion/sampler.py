"""A deterministic multi-step sampler over x0-predictions: DDIM with η = 0 (Song et al. 2021).

At each time t_k of a grid from the largest time down, x̂0 = x0_fn(x_t, t_k) and

    ε̂ = (x_t − α_t x̂0) / σ_t,        x_{t_{k+1}} = α_{t_{k+1}} x̂0 + σ_{t_{k+1}} ε̂        (Eq. 2.1 solved for ε)

and the last x̂0 is the sample. Nothing here assumes α_t² + σ_t² = 1, so the same loop is the Euler
sampler of a rectified flow (α_t = 1 − t, σ_t = t).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from distar.diffusion.process import Schedule, expand_like


def sample_times(schedule: Schedule, steps: int) -> list[Tensor]:
    """``steps`` times from the largest down, evenly spaced over the schedule's (shifted) range."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    fractions = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
    return [schedule._drawn(torch.tensor([schedule.t_lo + float(f) * (schedule.t_hi - schedule.t_lo)])) for f in fractions]


@torch.no_grad()
def ddim_sample(x0_fn: Callable[[Tensor, Tensor], Tensor], schedule: Schedule, noise: Tensor, steps: int) -> Tensor:
    """x0 from ``noise`` (x_T = z) in ``steps`` calls of ``x0_fn(x_t, t)`` (module docstring)."""
    x_t, x0 = noise, noise
    times = sample_times(schedule, steps)
    for k, t in enumerate(times):
        t_batch = t.to(noise.device).expand(noise.shape[0])
        alpha_t = expand_like(schedule.alpha(t_batch), noise).to(noise.dtype)
        sigma_t = expand_like(schedule.sigma(t_batch), noise).to(noise.dtype)
        x0 = x0_fn(x_t, t_batch)
        if k + 1 == len(times):
            break
        eps = (x_t - alpha_t * x0) / sigma_t
        t_next = times[k + 1].to(noise.device).expand(noise.shape[0])
        x_t = (
            expand_like(schedule.alpha(t_next), noise).to(noise.dtype) * x0
            + expand_like(schedule.sigma(t_next), noise).to(noise.dtype) * eps
        )
    return x0
