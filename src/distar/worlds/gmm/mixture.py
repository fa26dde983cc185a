"""Isotropic Gaussian mixtures in R^d and their exact noised scores (docs/math.md §1, Eq. 2.1).

Under x_t = α_t x0 + σ_t ε a mixture Σ_k π_k N(μ_k, s_k² I) stays a mixture,
Σ_k π_k N(α_t μ_k, v_k I) with v_k = α_t² s_k² + σ_t², so at every t

    log p_t(x_t)   = logsumexp_k [ log π_k + log N(x_t; α_t μ_k, v_k I) ]
    s(x_t)         = Σ_k γ_k(x_t) · (−(x_t − α_t μ_k) / v_k)                 (γ: posterior responsibilities)
    E[x0 | x_t]    = Σ_k γ_k(x_t) · (μ_k + α_t s_k² (x_t − α_t μ_k) / v_k)     (= (x_t + σ_t² s)/α_t, Tweedie)

Symbols: ``B`` batch, ``K`` components, ``d`` dimension. A :class:`Components` holds per-sample
component parameters (leading dim B, or 1 to broadcast), so one batch may mix prompts.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class Components(NamedTuple):
    """Mixture parameters: ``means`` (B|1, K, d), ``log_weights`` (B|1, K), ``variances`` s_k² (B|1, K).

    Padding components carry ``log_weights = -inf``.
    """

    means: Tensor
    log_weights: Tensor
    variances: Tensor


def _log_joint(x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, comps: Components) -> tuple[Tensor, Tensor, Tensor]:
    """log π_k + log N(x_t; α_t μ_k, v_k I) (B, K), the residuals x_t − α_t μ_k (B, K, d) and v_k (B, K)."""
    d = x_t.shape[-1]
    alpha = alpha_t.reshape(-1, 1)  # (B, 1)
    var_t = alpha**2 * comps.variances + sigma_t.reshape(-1, 1) ** 2  # (B, K)
    resid = x_t[:, None, :] - alpha[..., None] * comps.means  # (B, K, d)
    log_joint = (
        comps.log_weights
        - 0.5 * resid.pow(2).sum(-1) / var_t
        - 0.5 * d * torch.log(2 * math.pi * var_t)
    )
    return log_joint, resid, var_t


def log_prob(x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, comps: Components) -> Tensor:
    """log p_t(x_t), shape (B,); x_t (B, d), α_t and σ_t (B,)."""
    return torch.logsumexp(_log_joint(x_t, alpha_t, sigma_t, comps)[0], dim=-1)


def responsibilities(x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, comps: Components) -> Tensor:
    """Posterior component probabilities γ_k(x_t), shape (B, K), rows summing to one."""
    return torch.softmax(_log_joint(x_t, alpha_t, sigma_t, comps)[0], dim=-1)


def score(x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, comps: Components) -> Tensor:
    """∇_{x_t} log p_t(x_t), shape (B, d)."""
    log_joint, resid, var_t = _log_joint(x_t, alpha_t, sigma_t, comps)
    gamma = torch.softmax(log_joint, dim=-1)
    return -(gamma[..., None] * resid / var_t[..., None]).sum(1)


def posterior_mean(x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, comps: Components) -> Tensor:
    """E[x0 | x_t], the exact x0-prediction, shape (B, d); differentiable in ``x_t``."""
    log_joint, resid, var_t = _log_joint(x_t, alpha_t, sigma_t, comps)
    gamma = torch.softmax(log_joint, dim=-1)
    gain = alpha_t.reshape(-1, 1) * comps.variances / var_t  # (B, K)
    x0_k = comps.means + gain[..., None] * resid  # (B, K, d)
    return (gamma[..., None] * x0_k).sum(1)


def sample(comps: Components, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One exact draw per row of ``comps`` (leading dim B): points (B, d) and component indices (B,)."""
    k = torch.multinomial(comps.log_weights.softmax(-1), 1, generator=generator).squeeze(1)
    rows = torch.arange(len(k), device=k.device)
    mean, var = comps.means[rows, k], comps.variances[rows, k]
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + var.sqrt()[:, None] * eps, k
