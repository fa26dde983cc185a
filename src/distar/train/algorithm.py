"""The two updates of Algorithm 1 (docs/math.md §7), as per-sample losses over any Backend.

The trainer averages ``"loss"``, back-propagates and steps the matching optimiser; every other key
is a per-sample term for logging. Time t and noise ε come from torch's global RNG, so restoring
RNG state on resume reproduces the same draws. A :class:`BatchPart` makes every draw for the global
batch of all processes and keeps this process's slice of it (see there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from distar.objectives.di_star import DIStarLoss, dsm_loss, native_dsm_weight
from distar.objectives.presets import ObjectiveConfig
from distar.protocols import Backend, Conditioning
from distar.rewards.base import Reward, WeightedReward


@dataclass(frozen=True)
class BatchPart:
    """The samples ``rank·b … rank·b + b − 1`` of a global batch of ``world_size·b``, computed by this process.

    When every process seeds torch's RNG alike, :meth:`draw` makes each draw for the whole global
    batch on every process and keeps this process's slice: N processes at batch b then draw exactly
    the noise and times that one process draws at batch N·b (the draws cost N times the random
    numbers, nothing else). ``BatchPart()`` is the whole batch (one process, or independent draws).
    """

    rank: int = 0
    world_size: int = 1

    def draw(self, make: Callable[[int], Tensor], batch_size: int) -> Tensor:
        """This process's ``batch_size`` rows of ``make(world_size · batch_size)``."""
        if self.world_size == 1:
            return make(batch_size)
        first = self.rank * batch_size
        return make(batch_size * self.world_size)[first : first + batch_size]

    def generators(self, batch_size: int) -> list[torch.Generator]:
        """One CPU generator per sample of this process, seeded from one draw for the global batch."""
        seeds = self.draw(lambda n: torch.randint(2**62, (n,)), batch_size)
        return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def _noise_and_time(
    backend: Backend, x0: Tensor, objective: ObjectiveConfig, part: BatchPart
) -> tuple[Tensor, Tensor]:
    """t ~ U[t_min, t_max] (fraction of the schedule) and ε ~ N(0, I), one per sample."""
    batch = x0.shape[0]
    t = part.draw(lambda n: backend.schedule.sample_t(n, objective.t_min, objective.t_max, device=x0.device), batch)
    noise = part.draw(lambda n: torch.randn((n, *x0.shape[1:]), dtype=x0.dtype, device=x0.device), batch)
    return t, noise


def generator_x0(backend: Backend, z: Tensor, cond: Conditioning, part: BatchPart = BatchPart()) -> Tensor:
    """x0 = g_θ(x_{t_i}, c), differentiable in θ through the last evaluation only.

    One step (k = 1): x0 = g_θ(z, c). Few steps (``backend.num_steps`` k > 1): DMD2's backward
    simulation; a step i ~ U{0..k-1} (global RNG) is drawn for the batch, and its input x_{t_i} is
    made, without gradient, as inference makes it: z for i = 0, else the generator's own x0 after steps
    0..i-1, re-noised to t_i (each sample's noise from its own generator, seeded through ``part``). The
    objective then sees the samples that inference produces at step i.
    """
    steps = backend.num_steps
    if steps == 1:
        return backend.generate(z, cond)
    last = int(torch.randint(steps, ()))
    x = z
    with torch.no_grad():
        for step in range(last):
            x = backend.renoise(backend.generate(x, cond, step), step + 1, part.generators(z.shape[0]))
    return backend.generate(x, cond, last)


def assistant_losses(
    backend: Backend, cond: Conditioning, z: Tensor, *, objective: ObjectiveConfig, part: BatchPart = BatchPart()
) -> dict[str, Tensor]:
    """Assistant step: DSM (2.2) of s_ψ on detached generator samples x0 = sg(g_θ(z, c))."""
    with torch.no_grad():
        x0 = generator_x0(backend, z, cond, part)
    t, noise = _noise_and_time(backend, x0, objective, part)
    x_t = backend.schedule.add_noise(x0, noise, t)
    x0_hat = backend.assistant_x0(x_t, t, cond)
    weight = None
    if objective.dsm_weighting == "native":
        weight = native_dsm_weight(backend.schedule.alpha(t), backend.schedule.sigma(t), backend.prediction_type)
    return {"loss": dsm_loss(x0_hat, x0, weight)}


def generator_losses(
    backend: Backend,
    cond: Conditioning,
    z: Tensor,
    *,
    prompts: Sequence[str],
    reward: Reward | None,
    loss: DIStarLoss,
    part: BatchPart = BatchPart(),
) -> dict[str, Tensor]:
    """Generator step: Eq. (3.4) (+ (3.6) in outer-CFG mode) at x0 = g_θ(z, c) (:func:`generator_x0`).

    ``prompts`` are the c that ``cond`` encodes (the reward scores the images against them), and
    ``loss`` is the run's objective, built once from its :class:`ObjectiveConfig`. A weighted reward
    adds each term's unweighted score as ``"reward/<name>"`` (:attr:`WeightedReward.names`). The graph runs
    from θ through x0 and x_t into the assistant's and the reference's inputs (Theorem 3.1); their
    parameters are not the caller's to update here.
    """
    x0 = generator_x0(backend, z, cond, part)
    t, noise = _noise_and_time(backend, x0, loss.config, part)
    reward_values, reward_terms = None, {}
    if reward is not None:
        images = backend.decode(x0)
        if loss.uses_reward:
            reward_values, reward_terms = _score(reward, images, prompts)
        else:
            with torch.no_grad():  # α = 0: the reward is only logged, no graph through the reward model
                reward_values, reward_terms = _score(reward, images.detach(), prompts)
    terms = loss(
        x0,
        noise,
        alpha_t=backend.schedule.alpha(t),
        sigma_t=backend.schedule.sigma(t),
        fake_x0=lambda x_t: backend.assistant_x0(x_t, t, cond),
        ref_x0=lambda x_t: backend.reference_x0(x_t, t, cond),
        ref_x0_pair=lambda x_t: backend.reference_x0_cond_uncond(x_t, t, cond),
        reward=reward_values,
    )
    return terms | {f"reward/{name}": value.detach() for name, value in reward_terms.items()}


def _score(reward: Reward, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """The (B,) reward and, for a :class:`~distar.rewards.base.WeightedReward`, each term's (B,) score
    from the same evaluation."""
    if isinstance(reward, WeightedReward):
        return reward.score_with_terms(images, prompts)
    return reward.score(images, prompts), {}
