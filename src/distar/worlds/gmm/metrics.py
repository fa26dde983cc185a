"""Exact or near-exact metrics of the gmm world, computed per prompt and averaged over prompts.

- **reward**: mean r(x, c) of the samples.
- **mode masses** m_k = mean_i γ_k(x_i) 1[x_i on a mode]: the samples' share of reference mode k, by
  posterior responsibility γ_k under the prompt's reference mixture (t = 0), counting only points
  "on a mode": within the 0.999 quantile of some component, ‖x − μ_k‖²/s_k² ≤ χ²_d(0.999)
  (Wilson–Hilferty). A reference draw is off every mode with probability ≤ 0.001.
- **off-mode mass**: 1 − Σ_k m_k, the share of samples on no mode (e.g. bridges between modes).
- **mode coverage**: fraction of (prompt, mode) pairs with m_k ≥ 0.1 π_k.
- **mode entropy**: entropy (nats) of the on-mode histogram m / Σ_k m_k, averaged over prompts (the
  reference's is H(π); 0 for one mode or none).
- **energy distance** (V-statistic, ≥ 0, exactly 0 for identical sample sets):
  ED(X, Y) = 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖, against exact reference draws and against exact
  draws of the KL-optimal tilted target p*(x | c) ∝ p_ref(x | c) exp(α r(x, c)) (importance resampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from distar.rewards.base import Reward
from distar.worlds.gmm.mixture import responsibilities
from distar.worlds.gmm.world import GMMWorld


def energy_distance(x: Tensor, y: Tensor) -> float:
    """V-statistic energy distance between sample sets x (n, d) and y (m, d)."""
    x, y = x.double(), y.double()
    cross = torch.cdist(x, y).mean()
    return float(2 * cross - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def chi2_quantile(dim: int, z: float = 3.090232) -> float:
    """Wilson–Hilferty approximation of the χ²_dim quantile at the standard-normal quantile z
    (default 0.999): dim (1 − 2/(9 dim) + z sqrt(2/(9 dim)))³."""
    v = 2 / (9 * dim)
    return dim * (1 - v + z * math.sqrt(v)) ** 3


def mode_masses(world: GMMWorld, c: int, points: Tensor) -> Tensor:
    """m_k for prompt c: mean over ``points`` (n, d) of γ_k(x)·1[x on a mode]; shape (K,), sum ≤ 1."""
    n = points.shape[0]
    one, zero = torch.ones(n, device=points.device), torch.zeros(n, device=points.device)
    comps = world.prompt_components(c)
    mahalanobis = (points[:, None] - comps.means).pow(2).sum(-1) / comps.variances  # (n, K)
    on_mode = mahalanobis.min(-1).values <= chi2_quantile(points.shape[-1])
    return (responsibilities(points, one, zero, comps) * on_mode[:, None]).mean(0)


def coverage_and_entropy(masses: Tensor, weights: Tensor, threshold: float = 0.1) -> tuple[Tensor, Tensor]:
    """Per-mode coverage flags m_k ≥ threshold·π_k (K,) and the entropy (nats) of m / Σ m, one prompt."""
    covered = masses >= threshold * weights
    p = masses / masses.sum().clamp_min(1e-12)
    return covered, -torch.special.xlogy(p, p).sum()


def tilted_samples(
    world: GMMWorld,
    reward: Reward,
    c: int,
    reward_scale: float,
    n: int,
    pool: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, float]:
    """n draws from p*(x | c) ∝ p_ref(x | c) exp(α r(x, c)) by importance resampling of ``pool`` exact
    reference draws, and the effective sample size (Σw)²/Σw² of the pool."""
    draws = world.sample(c, pool, generator)
    with torch.no_grad():
        log_w = reward_scale * reward.score(draws, [world.prompts[c]] * pool).double().cpu()
    w = (log_w - log_w.max()).exp()
    ess = float(w.sum() ** 2 / w.pow(2).sum())
    idx = torch.multinomial(w, n, replacement=True, generator=generator)
    return draws[idx.to(draws.device)], ess


@dataclass
class SampleMetrics:
    """Metrics of one model's samples, averaged over prompts (see the module docstring)."""

    reward: float
    mode_coverage: float
    mode_entropy: float
    off_mode_mass: float
    energy_distance_ref: float
    energy_distance_tilted: float
    mode_masses: list[list[float]]


def evaluate_samples(
    world: GMMWorld,
    reward: Reward,
    samples: Sequence[Tensor],
    reference: Sequence[Tensor],
    tilted: Sequence[Tensor],
    threshold: float = 0.1,
) -> SampleMetrics:
    """Metrics for per-prompt sample sets ``samples[c]`` (n, d) against per-prompt exact reference and
    tilted-target draws."""
    rewards, flags, entropies, off, ed_ref, ed_tilted, masses = [], [], [], [], [], [], []
    for c, x in enumerate(samples):
        with torch.no_grad():
            rewards.append(reward.score(x, [world.prompts[c]] * len(x)).mean())
        m = mode_masses(world, c, x)
        covered, entropy = coverage_and_entropy(m, world.log_weights[c].exp(), threshold)
        flags.append(covered.float())
        entropies.append(entropy)
        off.append(1 - float(m.sum()))
        masses.append([round(float(v), 6) for v in m])
        ed_ref.append(energy_distance(x, reference[c]))
        ed_tilted.append(energy_distance(x, tilted[c]))
    return SampleMetrics(
        reward=float(torch.stack(rewards).mean()),
        mode_coverage=float(torch.cat(flags).mean()),
        mode_entropy=float(torch.stack(entropies).mean()),
        off_mode_mass=sum(off) / len(off),
        energy_distance_ref=sum(ed_ref) / len(ed_ref),
        energy_distance_tilted=sum(ed_tilted) / len(ed_tilted),
        mode_masses=masses,
    )
