"""The gmm world as a :class:`distar.protocols.Backend`: exact reference, MLP generator and assistant.

The reference x0-predictions are the exact posterior means E[x0 | x_t, c] and E[x0 | x_t, ∅] of the
world's mixtures (:mod:`distar.worlds.gmm.mixture`), i.e. x̂0 = (x_t + σ_t² s_ref)/α_t (§1) with the
analytic score, so CFG (Eq. 3.5) combines two exact scores. Conditioning is the prompt index (B,).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from distar.diffusion.process import ContinuousVPSchedule, PredictionType, Schedule
from distar.protocols import OneStepBackend
from distar.worlds.gmm.mixture import Components, posterior_mean
from distar.worlds.gmm.models import ConditionalMLP, GMMDenoiser, GMMNetConfig
from distar.worlds.gmm.world import GMMWorld


class GMMBackend(OneStepBackend):
    """Generator g_θ(z, c) and assistant x̂0_ψ (small MLPs) against the world's exact reference.

    The reference is analytic (no module of its own) and the assistant outputs x̂0 itself."""

    reference = None
    prediction_type: PredictionType = "sample"

    def __init__(
        self,
        world: GMMWorld,
        net: GMMNetConfig | None = None,
        schedule: Schedule | None = None,
        seed: int = 0,
    ) -> None:
        self.world = world
        self.net = net = net or GMMNetConfig()
        self.schedule = schedule or ContinuousVPSchedule("linear")
        with torch.random.fork_rng(devices=[]):  # initialisation independent of the caller's RNG stream
            torch.manual_seed(seed)
            self.generator: nn.Module = ConditionalMLP(world.dim, world.dim, world.num_prompts, net).to(world.device)
            self.assistant: nn.Module = GMMDenoiser(
                world.dim, world.num_prompts, net, self.schedule, world.rms()
            ).to(world.device)

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Prompt indices (B,)."""
        return self.world.prompt_index(prompts)

    def sample_latents(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I), shape (B, d)."""
        z = torch.randn(batch_size, self.world.dim, generator=generator)
        return z.to(self.world.device)

    def generate(self, z: Tensor, cond: Tensor, step: int = 0) -> Tensor:
        """x0 = g_θ(z, c), (B, d); ``step`` is 0 (one step)."""
        return self.generator(z, cond)

    def _exact_x0(self, x_t: Tensor, t: Tensor, comps: Components) -> Tensor:
        return posterior_mean(x_t, self.schedule.alpha(t), self.schedule.sigma(t), comps)

    def reference_x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Exact E[x0 | x_t, c], (B, d)."""
        return self._exact_x0(x_t, t, self.world.conditional(cond))

    def reference_x0_cond_uncond(self, x_t: Tensor, t: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Exact (E[x0 | x_t, c], E[x0 | x_t, ∅]), each (B, d)."""
        return self.reference_x0(x_t, t, cond), self._exact_x0(x_t, t, self.world.marginal())

    def assistant_x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.assistant(x_t, t, cond)

    def decode(self, x0: Tensor) -> Tensor:
        """Identity: the reward reads the points themselves."""
        return x0

    def generator_parameters(self) -> Iterable[nn.Parameter]:
        return self.generator.parameters()

    def assistant_parameters(self) -> Iterable[nn.Parameter]:
        return self.assistant.parameters()
