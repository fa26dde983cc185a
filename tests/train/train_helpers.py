"""A tiny Gaussian Backend and reward for fast, exact tests of the training loop."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from distar.config import from_dict
from distar.diffusion.process import ContinuousVPSchedule, expand_like
from distar.protocols import OneStepBackend
from distar.rewards.base import Reward
from distar.train.config import TrainConfig

PROMPTS = [f"prompt number {i}" for i in range(10)]


class AffineGenerator(nn.Module):
    """g_θ(z, c) = a ⊙ z + b + c w."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(dim))
        self.b = nn.Parameter(torch.zeros(dim))
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        flat = z.flatten(1)
        return (self.a * flat + self.b + cond[:, None] * self.w).reshape(z.shape)


class LinearDenoiser(nn.Module):
    """x̂0(x_t, t, c): a linear map of (x_t, t, c)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Linear(dim + 2, dim)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        h = torch.cat([x_t.flatten(1), t[:, None].to(x_t.dtype), cond[:, None]], dim=1)
        return self.net(h).reshape(x_t.shape)


class GaussianBackend(OneStepBackend):
    """Data x0 ~ N(m(c), I) with m(c) from a frozen linear map (the reference); exact reference posterior mean.

    ``image=True`` makes samples (3, 4, 4) and decodes them with a sigmoid (an "image" backend);
    otherwise samples are 2-D points decoded by the identity.
    """

    prediction_type = "sample"

    def __init__(self, image: bool = False, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.shape = (3, 4, 4) if image else (2,)
        dim = int(torch.tensor(self.shape).prod())
        self.schedule = ContinuousVPSchedule()
        self.generator = AffineGenerator(dim)
        self.assistant = LinearDenoiser(dim)
        self.mean_map = self.reference = nn.Linear(1, dim).requires_grad_(False)
        self.image = image

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        return torch.tensor([len(p) / 10.0 for p in prompts])

    def sample_latents(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(batch_size, *self.shape, generator=generator)

    def generate(self, z: Tensor, cond: Tensor, step: int = 0) -> Tensor:
        return self.generator(z, cond)

    def _posterior_mean(self, x_t: Tensor, t: Tensor, mean: Tensor) -> Tensor:
        alpha_t = expand_like(self.schedule.alpha(t), x_t)
        sigma_t = expand_like(self.schedule.sigma(t), x_t)
        return mean + alpha_t / (alpha_t**2 + sigma_t**2) * (x_t - alpha_t * mean)

    def reference_x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        mean = self.mean_map(cond[:, None]).reshape(x_t.shape)
        return self._posterior_mean(x_t, t, mean)

    def reference_x0_cond_uncond(self, x_t: Tensor, t: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        return self.reference_x0(x_t, t, cond), self._posterior_mean(x_t, t, torch.zeros_like(x_t))

    def assistant_x0(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.assistant(x_t, t, cond)

    def decode(self, x0: Tensor) -> Tensor:
        return torch.sigmoid(x0) if self.image else x0

    def generator_parameters(self) -> Iterable[nn.Parameter]:
        return self.generator.parameters()

    def assistant_parameters(self) -> Iterable[nn.Parameter]:
        return self.assistant.parameters()


class MeanReward(Reward):
    """r(x) = mean of the decoded sample (brighter images score higher)."""

    name = "mean"

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return images.flatten(1).mean(1)


class BrightnessJudge(Reward):
    """A judge for the monitor's tests: ``sign`` × the mean of the decoded sample (−1: it disagrees with MeanReward)."""

    name = "brightness"

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = sign

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.sign * images.flatten(1).mean(1)


def make_config(output_dir, **sections) -> TrainConfig:
    """A fast CPU config for the Gaussian backend; ``sections`` are nested dict overrides."""
    data = {
        "objective": {"preset": "di_star", "reward_scale": 1.0},
        "data": {"prompts": PROMPTS, "batch_size": 4},
        "optim": {"generator": {"lr": 1e-2}, "assistant": {"lr": 1e-2}},
        "loop": {"max_steps": 6, "assistant_steps": 2},
        "logging": {"every": 2, "report_to": "none", "progress_bar": False},
        "output_dir": str(output_dir),
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return from_dict(TrainConfig, data)
