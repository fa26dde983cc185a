"""Theorem 3.1 and 3.2 of Diff-Instruct*: tractable generator losses (di-star-math.md §4, §5).

Legend (paper symbols): ``x0 = g_θ(z, c)`` generator sample (carries the graph to θ), ``noise`` = ε,
``x_t = α_t x0 + σ_t ε`` (2.1), ``fake_x0``/``real_x0`` callables x_t ↦ x̂0 of the assistant s_ψ and the
reference s_ref (frozen parameters; the graph through their *input* is kept),
``y_t = s_ψ(x_t) − s_ref(x_t)``, ``delta = x̂0_ψ − x̂0_ref`` so that y_t = (α_t/σ_t²) delta.
All losses return per-sample values of shape (B,); the caller reduces.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from distar.diffusion.param import score_from_x0
from distar.objectives.divergences import L2, PseudoHuber, ScoreDivergence, apply_weight
from distar.objectives.ikl import ikl_loss

X0Fn = Callable[[Tensor], Tensor]
Divergence = Literal["pseudo_huber", "l2", "ikl"]


def make_divergence(divergence: Divergence, huber_c: Tensor | float = 1.0) -> ScoreDivergence:
    """The d(y) of Eq. (3.2) by name (``"ikl"`` is not a score divergence; see :func:`ikl_loss`)."""
    if divergence == "l2":
        return L2()
    if divergence == "pseudo_huber":
        return PseudoHuber(huber_c)
    raise ValueError(f"unknown score divergence {divergence!r} (expected 'pseudo_huber' or 'l2')")


def score_divergence_loss(
    x0: Tensor,
    noise: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    fake_x0: X0Fn,
    real_x0: X0Fn,
    dist: ScoreDivergence,
    weight: Tensor | float | None = None,
) -> Tensor:
    """Eq. (3.4) without its reward term: −w(t) d'(y_t(x_t))ᵀ {s_ψ(x_t) − ∇_{x_t} log q_t(x_t | x0)}.

    Its θ-gradient equals that of the score divergence (3.3) with the sampling distribution frozen
    (Theorem 3.1), provided the gradient flows through x_t into *both* score networks' inputs — so
    ``d'(y_t)`` is deliberately not detached. ∇ log q_t(x_t | x0) = −ε/σ_t carries no gradient.
    """
    x_t = alpha_t * x0 + sigma_t * noise
    fake = fake_x0(x_t)
    real = real_x0(x_t)
    y_t = score_from_x0(x_t, fake, alpha_t, sigma_t) - score_from_x0(x_t, real, alpha_t, sigma_t)
    s_fake_minus_cond = score_from_x0(x_t, fake, alpha_t, sigma_t) + noise / sigma_t
    term = (dist.d_prime(y_t) * s_fake_minus_cond).flatten(1).sum(dim=1)
    return -apply_weight(term, weight)


def generator_loss(
    x0: Tensor,
    noise: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    fake_x0: X0Fn,
    real_x0: X0Fn,
    divergence: Divergence = "pseudo_huber",
    huber_c: Tensor | float = 1.0,
    weight: Tensor | float | None = None,
    normalize: bool = False,
) -> Tensor:
    """The divergence part of the generator loss, per sample (B,).

    ``"l2"``/``"pseudo_huber"``: Theorem 3.1, loss (3.4) without the reward term, d(y) = ‖y‖² or
    sqrt(‖y‖² + c²) − c with c = ``huber_c`` in score units. ``"ikl"``: the Integral-KL loss of §6.
    ``alpha_t``/``sigma_t`` must broadcast against ``x0``; ``weight`` is w(t), scalar or (B,);
    ``normalize`` (IKL only) applies DMD2's per-sample normalisation.
    """
    if divergence == "ikl":
        return ikl_loss(x0, noise, alpha_t, sigma_t, fake_x0, real_x0, weight, normalize)
    if normalize:
        raise ValueError("per-sample normalisation is defined for the IKL divergence only")
    dist = make_divergence(divergence, huber_c)
    return score_divergence_loss(x0, noise, alpha_t, sigma_t, fake_x0, real_x0, dist, weight)


def cfg_reward_loss(
    x_t: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    cond_x0: Tensor,
    uncond_x0: Tensor,
    weight: Tensor | float | None = None,
) -> Tensor:
    """Eq. (3.6–3.7), Theorem 3.2: −w(t) sg(s_ref(x_t|c) − s_ref(x_t|∅))ᵀ x_t, per sample (B,).

    The tractable loss of the implicit CFG reward log p(c | x_t); its gradient flows through x_t
    only. In x0 form s(·|c) − s(·|∅) = (α_t/σ_t²)(x̂0(·|c) − x̂0(·|∅)).
    """
    direction = (alpha_t / sigma_t**2 * (cond_x0 - uncond_x0)).detach()
    return -apply_weight((direction * x_t).flatten(1).sum(dim=1), weight)


def reward_loss(reward: Tensor, reward_scale: float) -> Tensor:
    """The reward term of Eq. (3.1)/(3.4): −α r(x0, c), per sample (B,)."""
    return -reward_scale * reward
