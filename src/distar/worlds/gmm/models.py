"""Small MLPs for the gmm world: the one-step generator g_θ(z, c) and the x0-denoising assistant.

The assistant uses EDM-style preconditioning written for a VP schedule: with y = x_t/α_t and
s = σ_t/α_t (the noise level of y = x0 + s ε),

    x̂0 = c_skip y + c_out F(c_in y, c_noise, c),   c_skip = σ_d²/(s² + σ_d²),
    c_out = s σ_d / sqrt(s² + σ_d²),  c_in = 1/sqrt(s² + σ_d²),  c_noise = log(s)/4,

so both ends of the time range are well conditioned (σ_d: the data's per-coordinate scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distar.config import field
from distar.diffusion.process import Schedule


@dataclass
class GMMNetConfig:
    """Sizes of the generator and assistant MLPs."""

    hidden: int = field(128, help="Hidden width of both MLPs.")
    depth: int = field(3, help="Number of hidden layers of both MLPs.")
    embed_dim: int = field(16, help="Size of the learned prompt embedding.")
    noise_frequencies: int = field(4, help="Fourier frequencies 2^0..2^(n-1) used to embed c_noise.")

    def __post_init__(self) -> None:
        if min(self.hidden, self.depth, self.embed_dim) < 1 or self.noise_frequencies < 0:
            raise ValueError("hidden, depth and embed_dim must be >= 1, noise_frequencies >= 0")


class ConditionalMLP(nn.Module):
    """F(features, c): an MLP on [features, embedding(c)] with SiLU activations, features (B, n) and prompt
    indices c (B,). The generator x0 = g_θ(z, c) is one, from z (B, d) to points (B, d)."""

    def __init__(self, in_features: int, out_features: int, num_prompts: int, net: GMMNetConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_prompts, net.embed_dim)
        layers: list[nn.Module] = []
        width = in_features + net.embed_dim
        for _ in range(net.depth):
            layers += [nn.Linear(width, net.hidden), nn.SiLU()]
            width = net.hidden
        layers.append(nn.Linear(width, out_features))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: Tensor, c: Tensor) -> Tensor:
        return self.mlp(torch.cat([features, self.embed(c)], dim=-1))


class GMMDenoiser(nn.Module):
    """x̂0_ψ(x_t, t, c) with the preconditioning of the module docstring; x_t (B, d), t (B,), c (B,)."""

    def __init__(
        self, dim: int, num_prompts: int, net: GMMNetConfig, schedule: Schedule, sigma_data: float
    ) -> None:
        super().__init__()
        self.schedule, self.sigma_data = schedule, sigma_data
        self.register_buffer("frequencies", 2.0 ** torch.arange(net.noise_frequencies), persistent=False)
        self.net = ConditionalMLP(dim + 1 + 2 * net.noise_frequencies, dim, num_prompts, net)
        # F = 0 at start: x̂0 = c_skip y, the posterior mean for a N(0, σ_d² I) prior.
        nn.init.zeros_(self.net.mlp[-1].weight)
        nn.init.zeros_(self.net.mlp[-1].bias)

    def forward(self, x_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
        alpha_t, sigma_t = self.schedule.alpha(t)[:, None], self.schedule.sigma(t)[:, None]  # (B, 1)
        y, s = x_t / alpha_t, sigma_t / alpha_t
        norm = (s**2 + self.sigma_data**2).sqrt()
        c_skip, c_out, c_in = self.sigma_data**2 / norm**2, s * self.sigma_data / norm, 1 / norm
        c_noise = s.log() / 4  # (B, 1)
        phase = c_noise * self.frequencies  # (B, n)
        features = torch.cat([c_in * y, c_noise, phase.sin(), phase.cos()], dim=-1)
        return c_skip * y + c_out * self.net(features, c)
