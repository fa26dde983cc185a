"""The gmm world's reference: per-prompt Gaussian mixtures on a ring of mode locations.

``num_locations`` locations sit evenly on a circle of radius ``radius`` in the first two coordinates
(all other coordinates zero, so the plots' 2-D projection is exact for any ``dim``). Prompt c uses
the locations (c·⌊L/C⌋ + j·stride) mod L for j = 0..K−1 with weights ``mode_weights[j]``; with the
defaults (C = 4, L = 8, stride 3, weights 0.6/0.3/0.1) some locations belong to one prompt and others
are shared by two, so p(c | x) varies over space and classifier-free guidance (Eq. 3.5) is not
trivial. The unconditional reference p(x | ∅) is the prompt-marginal mixture (1/C) Σ_c p(x | c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from distar.config import field
from distar.worlds.gmm.mixture import Components, sample


@dataclass
class GMMWorldConfig:
    """Shape of the gmm world's reference distributions and of its reward."""

    num_prompts: int = field(4, help="Number of discrete prompts, named 'prompt 0' .. 'prompt C-1'.")
    dim: int = field(2, help="Dimension d of the sample space (the mixture lives in the first two).")
    num_locations: int = field(8, help="Mode locations L, evenly spaced on a circle.")
    radius: float = field(2.0, help="Radius of the circle of mode locations.")
    mode_std: float = field(0.2, help="Standard deviation of every mixture component (isotropic).")
    mode_weights: list[float] = field(
        [0.6, 0.3, 0.1], help="Mixture weights of each prompt's modes (normalised); K = their count."
    )
    mode_stride: int = field(3, help="Step, in locations, between consecutive modes of one prompt.")
    reward_mode: int = field(
        2, help="Index j (into mode_weights) of the mode whose location the reward favours for each prompt."
    )
    reward_width: float = field(0.75, help="Length scale ℓ of the Gaussian reward bump.")

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError("num_prompts must be >= 1")
        if not 2 <= self.dim <= 64:
            raise ValueError(f"dim must be in [2, 64], got {self.dim}")
        if not self.mode_weights or min(self.mode_weights) <= 0:
            raise ValueError("mode_weights must be a non-empty list of positive numbers")
        if len({(self.mode_stride * j) % self.num_locations for j in range(len(self.mode_weights))}) < len(
            self.mode_weights
        ):
            raise ValueError("mode_stride and num_locations put two modes of a prompt at one location")
        if not 0 <= self.reward_mode < len(self.mode_weights):
            raise ValueError(f"reward_mode must index mode_weights (0..{len(self.mode_weights) - 1})")
        if self.radius <= 0 or self.mode_std <= 0 or self.reward_width <= 0:
            raise ValueError("radius, mode_std and reward_width must be positive")


class GMMWorld:
    """The prompts, their reference mixtures p(x | c), the marginal p(x | ∅) and the reward centres."""

    def __init__(self, config: GMMWorldConfig | None = None, device: torch.device | str = "cpu") -> None:
        self.config = cfg = config or GMMWorldConfig()
        C, L, K = cfg.num_prompts, cfg.num_locations, len(cfg.mode_weights)
        self.prompts: list[str] = [f"prompt {c}" for c in range(C)]
        self._index = {p: c for c, p in enumerate(self.prompts)}
        angle = 2 * math.pi * torch.arange(L, dtype=torch.float64) / L
        self.locations = torch.zeros(L, cfg.dim, dtype=torch.float64)  # (L, d)
        self.locations[:, 0], self.locations[:, 1] = cfg.radius * angle.cos(), cfg.radius * angle.sin()
        #: location index of prompt c's mode j, (C, K)
        self.mode_locations = torch.tensor(
            [[(c * (L // C) + j * cfg.mode_stride) % L for j in range(K)] for c in range(C)]
        )
        weights = torch.tensor(cfg.mode_weights, dtype=torch.float64)
        weights = weights / weights.sum()
        self.means = self.locations[self.mode_locations].float().to(device)  # (C, K, d)
        self.log_weights = weights.log().float().expand(C, K).contiguous().to(device)  # (C, K)
        self.variances = torch.full((C, K), cfg.mode_std**2, device=device)  # (C, K)
        self.reward_centres = self.means[:, cfg.reward_mode].clone()  # (C, d)
        self.num_prompts, self.dim, self.device = C, cfg.dim, self.means.device

    def rms(self) -> float:
        """Per-coordinate root mean square of p(x | ∅): sqrt(Σ_k π_k (‖μ_k‖² + d s_k²) / d)."""
        comps = self.marginal()
        second_moment = comps.log_weights.exp() * (comps.means.pow(2).sum(-1) + self.dim * comps.variances)
        return math.sqrt(float(second_moment.sum()) / self.dim)

    def prompt_index(self, prompts: Sequence[str]) -> Tensor:
        """Prompt strings to indices (B,); unknown prompts raise ``KeyError`` naming the valid ones."""
        try:
            return torch.tensor([self._index[p] for p in prompts], dtype=torch.long, device=self.device)
        except KeyError as err:
            raise KeyError(f"unknown gmm prompt {err.args[0]!r}; valid: {', '.join(self.prompts)}") from None

    def conditional(self, c: Tensor) -> Components:
        """Components of p(x | c) for a batch of prompt indices c (B,)."""
        return Components(self.means[c], self.log_weights[c], self.variances[c])

    def prompt_components(self, c: int) -> Components:
        """Components of p(x | c) for one prompt, leading dim 1."""
        return self.conditional(torch.tensor([c], device=self.device))

    def marginal(self) -> Components:
        """Components of p(x | ∅) = (1/C) Σ_c p(x | c), leading dim 1 (C·K components)."""
        C, K, d = self.means.shape
        return Components(
            self.means.reshape(1, C * K, d),
            (self.log_weights - math.log(C)).reshape(1, C * K),
            self.variances.reshape(1, C * K),
        )

    def sample(self, c: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact reference draws x ~ p(x | c), shape (n, d), drawn on the CPU (``generator`` is a CPU one)."""
        comps = self.conditional(torch.full((n,), c, device=self.device))
        return sample(Components(*(p.cpu() for p in comps)), generator)[0].to(self.device)
