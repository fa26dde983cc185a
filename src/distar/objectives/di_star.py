"""The generator loss of Diff-Instruct*, Eq. (3.4), with its reward, CFG and divergence terms
(docs/math.md §3-§6): Theorem 3.1, the implicit CFG reward of Theorem 3.2, the IKL baselines,
and :class:`DIStarLoss`, the whole per-batch objective of an :class:`ObjectiveConfig`.

Legend (paper symbols): ``x0 = g_θ(z, c)`` generator sample (carries the graph to θ), ``noise`` = ε,
``x_t = α_t x0 + σ_t ε`` (2.1), ``fake``/``real`` the x0-predictions x̂0 of the assistant s_ψ and the
reference s_ref at x_t (frozen parameters; the graph through their *input* is kept), ``fake_x0`` /
``real_x0`` callables x_t ↦ x̂0, ``y_t = s_ψ(x_t) − s_ref(x_t)``. The distances d, d′ and the weights
w(t) are in :mod:`distar.objectives.divergences`. Every loss returns per-sample values of shape (B,);
the caller reduces.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
from torch import Tensor

from distar.diffusion.guidance import cfg_combine
from distar.diffusion.param import score_from_x0
from distar.diffusion.schedule import expand_like
from distar.objectives.divergences import (
    IKL,
    Divergence,
    DivergenceName,
    HuberUnits,
    ScoreDivergence,
    Weighting,
    make_divergence,
)
from distar.objectives.presets import ObjectiveConfig

X0Fn = Callable[[Tensor], Tensor]
X0PairFn = Callable[[Tensor], tuple[Tensor, Tensor]]
R = TypeVar("R")


def apply_weight(term: Tensor, weight: Tensor | float | None) -> Tensor:
    """w(t) · term for a per-sample term (B,) and a scalar, (B,) or absent weight."""
    if weight is None:
        return term
    return torch.as_tensor(weight, dtype=term.dtype, device=term.device) * term


def score_divergence_term(
    x_t: Tensor,
    noise: Tensor,
    *,
    alpha_t: Tensor,
    sigma_t: Tensor,
    fake: Tensor,
    real: Tensor,
    divergence: ScoreDivergence,
    weight: Tensor | float | None = None,
) -> Tensor:
    """Eq. (3.4) without its reward term: −w(t) d'(y_t(x_t))ᵀ {s_ψ(x_t) − ∇_{x_t} log q_t(x_t | x0)}.

    ``fake`` and ``real`` must be computed from ``x_t`` with the graph kept: the θ-gradient equals that
    of the score divergence (3.3) with the sampling distribution frozen (Theorem 3.1) only when it
    flows through x_t into *both* score networks' inputs, so ``d'(y_t)`` is deliberately not detached.
    ∇ log q_t(x_t | x0) = −ε/σ_t carries no gradient.
    """
    s_fake = score_from_x0(x_t, fake, alpha_t, sigma_t)
    y_t = s_fake - score_from_x0(x_t, real, alpha_t, sigma_t)
    term = (divergence.d_prime(y_t) * (s_fake + noise / sigma_t)).flatten(1).sum(dim=1)
    return -apply_weight(term, weight)


def ikl_term(
    x_t: Tensor,
    x0: Tensor,
    *,
    alpha_t: Tensor,
    sigma_t: Tensor,
    fake: Tensor,
    real: Tensor,
    normalize: bool = False,
    weight: Tensor | float | None = None,
) -> Tensor:
    """§6: L_IKL = w(t) sg(s_ψ(x_t) − s_ref(x_t))ᵀ x_t, per sample (B,); gradient through x_t only.

    Its θ-gradient is that of ∫ w(t) KL(p_θ,t ‖ p_ref,t) dt (the score-parameter term vanishes in
    expectation). ``normalize=True`` divides each sample by DMD2's mean|x0 − x̂0_ref|.
    """
    x_in = x_t.detach()
    y_t = (score_from_x0(x_in, fake, alpha_t, sigma_t) - score_from_x0(x_in, real, alpha_t, sigma_t)).detach()
    term = (y_t * x_t).flatten(1).sum(dim=1)
    if normalize:
        term = term / dmd2_normalizer(x0, real)
    return apply_weight(term, weight)


def dmd2_normalizer(x0: Tensor, real_x0: Tensor) -> Tensor:
    """DMD2's per-sample normaliser mean|x0 − x̂0_ref| over sample dimensions, shape (B,), detached."""
    return (x0 - real_x0).detach().abs().flatten(1).mean(dim=1).clamp_min(1e-12)


def cfg_reward_loss(
    x_t: Tensor,
    *,
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
    """The reward term of Eq. (3.1)/(3.4): −α r(x0, c), per sample (B,). α is ``objective.reward_scale``
    against a divergence term summed over the elements of x0 (docs/math.md §9)."""
    return -reward_scale * reward


def _divergence_term(
    x_t: Tensor,
    x0: Tensor,
    noise: Tensor,
    *,
    alpha_t: Tensor,
    sigma_t: Tensor,
    fake: Tensor,
    real: Tensor,
    divergence: Divergence,
    weight: Tensor | float | None = None,
) -> Tensor:
    """The divergence term of Eq. (3.4) at x_t, per sample (B,): :func:`score_divergence_term` for a
    score divergence, :func:`ikl_term` for the IKL of §6."""
    if isinstance(divergence, ScoreDivergence):
        return score_divergence_term(
            x_t, noise, alpha_t=alpha_t, sigma_t=sigma_t, fake=fake, real=real, divergence=divergence, weight=weight
        )
    if isinstance(divergence, IKL):
        return ikl_term(
            x_t, x0, alpha_t=alpha_t, sigma_t=sigma_t, fake=fake, real=real, normalize=divergence.normalize, weight=weight
        )
    raise TypeError(f"no generator loss for the divergence {type(divergence).__name__}")


def _predictions(x_t: Tensor, fake_x0: X0Fn, real_x0: Callable[[Tensor], R], *, divergence: Divergence) -> tuple[Tensor, R]:
    """(assistant x̂0, reference output) at x_t. For a score divergence the graph runs through x_t into
    both networks (Theorem 3.1); for IKL they run on sg(x_t) without a graph (reference first)."""
    if isinstance(divergence, ScoreDivergence):
        return fake_x0(x_t), real_x0(x_t)
    with torch.no_grad():
        real = real_x0(x_t.detach())
        return fake_x0(x_t.detach()), real


def _one_per_sample(v: Tensor | float, like: Tensor) -> Tensor:
    """α_t or σ_t, given as a scalar or broadcastable against ``like`` (B, ...), as a scalar or (B,)."""
    v = torch.as_tensor(v, device=like.device)
    if v.dim() == 0:
        return v
    if v[0].numel() != 1:
        raise ValueError(f"alpha_t/sigma_t: one value per sample, got {tuple(v.shape)} for x0 {tuple(like.shape)}")
    return v.reshape(v.shape[0])


def generator_loss(
    x0: Tensor,
    noise: Tensor,
    *,
    alpha_t: Tensor,
    sigma_t: Tensor,
    fake_x0: X0Fn,
    real_x0: X0Fn,
    divergence: DivergenceName | Divergence = "pseudo_huber",
    huber_c: Tensor | float = 1.0,
    huber_c_units: HuberUnits = "score",
    weighting: Weighting = "uniform",
    weight: Tensor | float | None = None,
    normalize: bool = False,
) -> Tensor:
    """The divergence part of the generator loss at x_t = α_t x0 + σ_t ε, per sample (B,).

    ``"l2"``/``"pseudo_huber"``: Theorem 3.1, loss (3.4) without the reward term, d(y) = ‖y‖² or
    sqrt(‖y‖² + c²) − c. ``"ikl"``: the Integral-KL loss of §6, ``normalize`` applying DMD2's
    per-sample normalisation. A :class:`Divergence` object is used as given (``huber_c``,
    ``huber_c_units`` and ``normalize`` are then its own). ``alpha_t``/``sigma_t`` must broadcast
    against ``x0`` with one value per sample (or one for all).

    ``huber_c``, ``huber_c_units`` and ``weighting`` mean what the keys of :class:`ObjectiveConfig`
    mean (docs/math.md §9); the defaults are the paper's plain form (c in score units, w(t) = 1),
    the config's are ``huber_c=0.1, huber_c_units="x0_per_sqrt_dim", weighting="x0"``.
    ``weight`` gives w(t) explicitly instead (scalar or (B,)), with ``weighting="uniform"``.
    """
    if not isinstance(divergence, Divergence):
        divergence = make_divergence(divergence, huber_c=huber_c, huber_c_units=huber_c_units, normalize=normalize)
    if weighting == "x0" and weight is not None:
        raise ValueError("give weighting='x0' or an explicit weight, not both")
    a, s = _one_per_sample(alpha_t, x0), _one_per_sample(sigma_t, x0)
    divergence = divergence.at(a, s, x0[0].numel())
    if weighting == "x0":
        weight = divergence.x0_weight(a, s).to(x0.dtype)
    x_t = alpha_t * x0 + sigma_t * noise
    fake, real = _predictions(x_t, fake_x0, real_x0, divergence=divergence)
    return _divergence_term(
        x_t, x0, noise, alpha_t=alpha_t, sigma_t=sigma_t, fake=fake, real=real, divergence=divergence, weight=weight
    )


#: :func:`generator_loss` for a score divergence object, e.g. one of your own (Theorem 3.1 holds for any d).
score_divergence_loss = generator_loss
#: :func:`generator_loss` with the Integral KL of §6 (networks under sg; ``normalize=True`` for DMD2).
ikl_loss = functools.partial(generator_loss, divergence="ikl")


class DIStarLoss:
    """Per-sample terms of the generator loss of an :class:`ObjectiveConfig`; build once per run.

    The divergence term (3.4) takes the reference CFG-enhanced inside y_t (inner, 3.5) or plain
    (outer); then minus α times the reward (3.1), plus α_cfg times the implicit CFG-reward loss
    (3.6-3.7) in outer mode. It only sees tensors and callables, never a network.
    """

    def __init__(self, config: ObjectiveConfig) -> None:
        self.config = config
        self.divergence = make_divergence(
            config.divergence, huber_c=config.huber_c, huber_c_units=config.huber_c_units, normalize=config.normalize
        )
        self.uses_reward = config.reward_scale != 0.0
        self.outer_cfg = config.cfg_mode == "outer"
        self.cfg_form = IKL()  # (3.6-3.7) has the form of IKL, sg(score difference)ᵀ x_t, and takes its w(t)

    def reference(self, x_t: Tensor, ref_x0: X0Fn, ref_x0_pair: X0PairFn) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """x̂0_ref at x_t for y_t, and the (conditional, unconditional) pair when outer CFG needs it.

        Inner: the guided reference (3.5), one plain call when ω = 1. Outer: one paired call serves
        both (3.4), through its conditional half, and (3.6)."""
        objective = self.config
        if self.outer_cfg:
            pair = ref_x0_pair(x_t)
            return pair[0], pair
        if objective.guidance_scale == 1.0:
            return ref_x0(x_t), None
        return cfg_combine(*ref_x0_pair(x_t), objective.guidance_scale), None

    def __call__(
        self,
        x0: Tensor,
        noise: Tensor,
        *,
        alpha_t: Tensor,
        sigma_t: Tensor,
        fake_x0: X0Fn,
        ref_x0: X0Fn,
        ref_x0_pair: X0PairFn,
        reward: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Terms for ``x0`` (generator output, with graph), ε, per-sample ``alpha_t``/``sigma_t`` (B,),
        the assistant ``fake_x0``, the conditional reference ``ref_x0``, the (conditional, unconditional)
        reference ``ref_x0_pair``, and the per-sample reward r(x0, c) or None.

        Returns ``{"loss", "divergence"}`` plus ``"cfg"`` (outer CFG with α_cfg ≠ 0) and ``"reward"``
        (when given), each of shape (B,); "loss" is what the generator minimises.
        """
        objective, dist = self.config, self.divergence.at(alpha_t, sigma_t, x0[0].numel())
        a, s = expand_like(alpha_t, x0).to(x0.dtype), expand_like(sigma_t, x0).to(x0.dtype)
        weight = dist.weight(objective.weighting, alpha_t, sigma_t).to(x0.dtype)
        x_t = a * x0 + s * noise
        reference = functools.partial(self.reference, ref_x0=ref_x0, ref_x0_pair=ref_x0_pair)
        fake, (real, pair) = _predictions(x_t, fake_x0, reference, divergence=dist)
        divergence = _divergence_term(
            x_t, x0, noise, alpha_t=a, sigma_t=s, fake=fake, real=real, divergence=dist, weight=weight
        )
        terms = {"divergence": divergence, "loss": divergence}
        if pair is not None and objective.cfg_reward_scale != 0.0:
            cfg_weight = self.cfg_form.weight(objective.weighting, alpha_t, sigma_t)
            cond, uncond = pair
            terms["cfg"] = cfg_reward_loss(
                x_t, alpha_t=a, sigma_t=s, cond_x0=cond, uncond_x0=uncond, weight=cfg_weight.to(x0.dtype)
            )
            terms["loss"] = terms["loss"] + objective.cfg_reward_scale * terms["cfg"]
        if reward is not None:
            terms["reward"] = reward.detach()
            if self.uses_reward:
                terms["loss"] = terms["loss"] + reward_loss(reward, objective.reward_scale)
        return terms
