"""Reward-free initialisation of the gmm world's generator and assistant from the exact reference.

- Generator: regression on pairs (z, x0 = Φ(z)) where Φ is the reference's probability-flow ODE,
  solved with DDIM steps and exact x0-predictions (the regression initialisation of DMD). Φ maps
  N(0, I) onto p_ref(· | c), so the fitted g_θ starts with every mode at its weight.
- Assistant: regression of x̂0_ψ(x_t, t, c) onto the exact E[x0 | x_t, c] on the reference's noisy
  marginals: the paper initialises the assistant as a copy of the reference.

Both are plain supervised fits (Adam, MSE); neither uses the reward.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from distar.fit import TrainLoop, fit
from distar.worlds.gmm.backend import GMMBackend
from distar.worlds.gmm.mixture import sample


@torch.no_grad()
def probability_flow_x0(backend: GMMBackend, z: Tensor, cond: Tensor, num_steps: int = 64) -> Tensor:
    """Φ(z): DDIM (deterministic) from x_1 = z to t_lo with the exact reference, returning x̂0 (B, d).

    Each step: x̂0 = E[x0 | x_t, c], ε̂ = (x_t − α_t x̂0)/σ_t, x_s = α_s x̂0 + σ_s ε̂ (Eq. 2.1, §1).
    """
    schedule = backend.schedule
    times = torch.linspace(schedule.t_hi, schedule.t_lo, num_steps + 1, device=z.device)
    x_t = z
    for t, s in zip(times[:-1], times[1:]):
        t_b, s_b = t.expand(len(z)), s.expand(len(z))
        x0 = backend.reference_x0(x_t, t_b, cond)
        eps = (x_t - schedule.alpha(t_b)[:, None] * x0) / schedule.sigma(t_b)[:, None]
        x_t = schedule.alpha(s_b)[:, None] * x0 + schedule.sigma(s_b)[:, None] * eps
    return backend.reference_x0(x_t, times[-1].expand(len(z)), cond)


def _adam(parameters: Iterable[nn.Parameter], batch_loss: Callable[[], Tensor], steps: int, lr: float) -> float:
    """``steps`` Adam steps at the constant ``lr`` on ``batch_loss()``, no clipping; returns the last loss."""
    loop = TrainLoop(steps=steps, lr=lr, weight_decay=0.0)
    last = fit(parameters, loop, lambda: {"loss": batch_loss()}, schedule="constant", max_grad_norm=None)
    return last.get("loss", 0.0)


def distill_generator(
    backend: GMMBackend, steps: int, batch_size: int, lr: float, pairs_per_prompt: int = 4096, ode_steps: int = 64
) -> float:
    """Fit g_θ(z, c) to Φ(z) on a fixed set of ODE pairs (global RNG); returns the final MSE."""
    world = backend.world
    cond = torch.arange(world.num_prompts, device=world.device).repeat_interleave(pairs_per_prompt)
    z = backend.sample_latents(len(cond))
    target = probability_flow_x0(backend, z, cond, ode_steps)

    def batch_loss() -> Tensor:
        i = torch.randint(0, len(cond), (batch_size,), device=world.device)
        return (backend.generate(z[i], cond[i]) - target[i]).pow(2).sum(-1).mean()

    return _adam(backend.generator_parameters(), batch_loss, steps, lr)


def distill_assistant(backend: GMMBackend, steps: int, batch_size: int, lr: float) -> float:
    """Fit x̂0_ψ to the exact reference x0-prediction at x_t ~ p_ref,t(· | c), t ~ U(t_lo, t_hi)."""
    world, schedule = backend.world, backend.schedule

    def batch_loss() -> Tensor:
        cond = torch.randint(0, world.num_prompts, (batch_size,), device=world.device)
        x0 = sample(world.conditional(cond))[0]
        t = schedule.sample_t(batch_size, 0.0, 1.0, device=world.device)
        x_t = schedule.add_noise(x0, torch.randn_like(x0), t)
        target = backend.reference_x0(x_t, t, cond).detach()
        return (backend.assistant_x0(x_t, t, cond) - target).pow(2).sum(-1).mean()

    return _adam(backend.assistant_parameters(), batch_loss, steps, lr)
