"""Diff-Instruct* in pure torch: both losses of Algorithm 1, in the order of docs/math.md §1-§6.

- Eq. (2.2): :func:`dsm_loss`, the assistant's denoising score matching, with :func:`native_dsm_weight`;
- Eq. (3.1): :func:`reward_loss`, the reward term −α r;
- Eq. (3.2): :class:`ScoreDivergence`, a distance d on score differences and its d′, with the
  generator-loss term of Eq. (3.4) (Theorem 3.1) in :meth:`ScoreDivergence.generator_term`;
  :class:`L2` and :class:`PseudoHuber` (3.8) with the units of its c; :class:`IKL`, their peer for the
  Integral-KL baselines of §6; :func:`make_divergence` by name; each with its w(t) (``x0_weight``);
- Eq. (3.6)-(3.7), Theorem 3.2: :func:`cfg_reward_loss`, the implicit CFG reward;
- :func:`generator_loss` (the divergence term at x_t) and :class:`DIStarLoss`, the whole per-batch
  generator objective of an :class:`~distar.objectives.presets.ObjectiveConfig`.

Legend (paper symbols): ``x0 = g_θ(z, c)`` generator sample (carries the graph to θ), ``noise`` = ε,
``x_t = α_t x0 + σ_t ε`` (2.1), ``fake``/``real`` the x0-predictions x̂0 of the assistant s_ψ and the
reference s_ref at x_t (frozen parameters; the graph through their *input* is kept), ``fake_x0`` /
``real_x0`` callables x_t ↦ x̂0, ``y`` / ``y_t = s_ψ(x_t) − s_ref(x_t)`` a per-sample score difference
in score units, shape (B, ...). Every loss returns per-sample values of shape (B,); the caller reduces.

Weightings w(t) (open choices of the paper): ``"uniform"``: w(t) = 1, everything in score units (the
form Theorem 3.1 is stated in); ``"x0"``: w(t) such that the per-sample term has unit coefficient in
x0 space (§4), which keeps magnitudes comparable across t for latent models, where score units
explode as σ_t → 0.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Literal, TypeVar

import torch
from torch import Tensor

from distar.diffusion.process import PredictionType, cfg_combine, expand_like, score_from_x0
from distar.objectives.presets import HuberUnits, ObjectiveConfig, Weighting

DivergenceName = Literal["pseudo_huber", "l2", "ikl"]
X0Fn = Callable[[Tensor], Tensor]
X0PairFn = Callable[[Tensor], tuple[Tensor, Tensor]]
R = TypeVar("R")


def sq_norm(y: Tensor) -> Tensor:
    """‖y‖² per sample: (B, ...) -> (B,)."""
    return y.flatten(1).pow(2).sum(dim=1)


def per_sample(v: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or (B,) value as (B, 1, ..., 1), broadcastable against ``like``."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim())) if v.dim() else v


def apply_weight(term: Tensor, weight: Tensor | float | None) -> Tensor:
    """w(t) · term for a per-sample term (B,) and a scalar, (B,) or absent weight."""
    if weight is None:
        return term
    return torch.as_tensor(weight, dtype=term.dtype, device=term.device) * term


# ---------------------------------------------------------------- the assistant (docs/math.md §1, Eq. 2.2)

def dsm_loss(x0_hat: Tensor, x0: Tensor, weight: Tensor | float | None = None) -> Tensor:
    """Eq. (2.2) in x0 form: λ(t) ‖x̂0_ψ(x_t) − x0‖², per sample, shape (B,).

    ``x0`` is the (detached) generator sample and ``x0_hat`` the assistant's x0-prediction at
    x_t = α_t x0 + σ_t ε. The squared error is averaged over the sample dimensions.
    """
    err = (x0_hat - x0.detach()).pow(2).flatten(1).mean(dim=1)
    return err if weight is None else per_sample(weight, err) * err


def native_dsm_weight(alpha_t: Tensor, sigma_t: Tensor, prediction_type: PredictionType) -> Tensor:
    """λ(t) that makes the x0-form loss equal the backbone's own MSE (shape of ``alpha_t``).

    ε-MSE = (α_t/σ_t)² x0-MSE; v-MSE = ((α_t² + σ_t²)/σ_t)² x0-MSE; flow-velocity MSE
    = ((α_t + σ_t)/σ_t)² x0-MSE (1/t² for rectified flow); x0-MSE = itself.
    """
    if prediction_type == "epsilon":
        return (alpha_t / sigma_t) ** 2
    if prediction_type == "v_prediction":
        return ((alpha_t**2 + sigma_t**2) / sigma_t) ** 2
    if prediction_type == "flow_prediction":
        return ((alpha_t + sigma_t) / sigma_t) ** 2
    if prediction_type == "sample":
        return alpha_t.new_ones(alpha_t.shape)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


# ---------------------------------------------------------------- reward − divergence (docs/math.md §3-§4, §6)

def reward_loss(reward: Tensor, reward_scale: float) -> Tensor:
    """The reward term of Eq. (3.1)/(3.4): −α r(x0, c), per sample (B,). α is ``objective.reward_scale``
    against a divergence term summed over the elements of x0 (docs/math.md §9)."""
    return -reward_scale * reward


class Divergence(ABC):
    """One divergence of Eq. (3.1): a name, its w(t) under each weighting, and its generator-loss term."""

    name: ClassVar[str]

    @abstractmethod
    def x0_weight(self, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
        """w(t) under ``weighting: x0``, shape of ``alpha_t``."""

    def weight(self, weighting: Weighting, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
        """w(t) per sample, shape of ``alpha_t``."""
        return self.x0_weight(alpha_t, sigma_t) if weighting == "x0" else alpha_t.new_ones(alpha_t.shape)

    def at(self, alpha_t: Tensor, sigma_t: Tensor, dim: int) -> Divergence:
        """This divergence with every constant in score units at times t (see :class:`PseudoHuber`)."""
        return self

    @abstractmethod
    def predictions(self, x_t: Tensor, fake_x0: X0Fn, real_x0: Callable[[Tensor], R]) -> tuple[Tensor, R]:
        """(assistant x̂0, reference output) at x_t, with or without the graph through x_t."""

    @abstractmethod
    def generator_term(
        self,
        x_t: Tensor,
        x0: Tensor,
        noise: Tensor,
        *,
        alpha_t: Tensor,
        sigma_t: Tensor,
        fake: Tensor,
        real: Tensor,
        weight: Tensor | float | None = None,
    ) -> Tensor:
        """The divergence term of the generator loss at x_t from :meth:`predictions`' x̂0s, per sample (B,)."""


class ScoreDivergence(Divergence):
    """d ≥ 0 with d(y) = 0 iff y = 0 (Eq. 3.2); its generator loss is Eq. (3.4) (Theorem 3.1)."""

    @abstractmethod
    def d(self, y: Tensor) -> Tensor:
        """d(y), shape (B,)."""

    @abstractmethod
    def d_prime(self, y: Tensor) -> Tensor:
        """∇_y d(y), same shape as ``y``."""

    def predictions(self, x_t: Tensor, fake_x0: X0Fn, real_x0: Callable[[Tensor], R]) -> tuple[Tensor, R]:
        """Both networks at x_t with the graph through x_t into their inputs (Theorem 3.1)."""
        return fake_x0(x_t), real_x0(x_t)

    def generator_term(
        self,
        x_t: Tensor,
        x0: Tensor,
        noise: Tensor,
        *,
        alpha_t: Tensor,
        sigma_t: Tensor,
        fake: Tensor,
        real: Tensor,
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
        term = (self.d_prime(y_t) * (s_fake + noise / sigma_t)).flatten(1).sum(dim=1)
        return -apply_weight(term, weight)


class L2(ScoreDivergence):
    """d(y) = ‖y‖² (Fisher divergence; SiD is this case); x0 weighting w = σ_t⁴/(2α_t²) (term −Δᵀe)."""

    name = "l2"

    def d(self, y: Tensor) -> Tensor:
        return sq_norm(y)

    def d_prime(self, y: Tensor) -> Tensor:
        return 2.0 * y

    def x0_weight(self, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
        return sigma_t**4 / (2 * alpha_t**2)


class PseudoHuber(ScoreDivergence):
    """Eq. (3.8): d(y) = sqrt(‖y‖² + c²) − c, d'(y) = y / sqrt(‖y‖² + c²).

    x0 weighting w = σ_t²/α_t, so that the term is −Δᵀe / sqrt(‖Δ‖² + c_x0²) with c_x0 = c σ_t²/α_t.
    ``d`` and ``d_prime`` take c in score units (a float, or one value per sample of shape (B,));
    :meth:`at` converts a c given in other ``units``.
    """

    name = "pseudo_huber"

    def __init__(self, c: Tensor | float = 1.0, units: HuberUnits = "score") -> None:
        self.c = c
        self.units = units

    def at(self, alpha_t: Tensor, sigma_t: Tensor, dim: int) -> PseudoHuber:
        """``objective.huber_c`` is c per √dim in x0 units (``units: x0_per_sqrt_dim``, converted here to
        the score-unit c = huber_c·√dim·α_t/σ_t², one per sample) or c itself (``units: score``)."""
        if self.units == "score":
            return self
        return PseudoHuber(self.c * math.sqrt(dim) * alpha_t / sigma_t**2)

    def d(self, y: Tensor) -> Tensor:
        c = torch.as_tensor(self.c, dtype=y.dtype, device=y.device)
        return torch.sqrt(sq_norm(y) + c**2) - c

    def d_prime(self, y: Tensor) -> Tensor:
        c = torch.as_tensor(self.c, dtype=y.dtype, device=y.device)
        return y / per_sample(torch.sqrt(sq_norm(y) + c**2), y)

    def x0_weight(self, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
        return sigma_t**2 / alpha_t


class IKL(Divergence):
    """Integral KL (§6): Diff-Instruct, Diff-Instruct++, DMD; ``normalize`` = DMD2's per-sample scale.

    Not a score divergence: its loss is :meth:`generator_term` (:func:`ikl_loss`). x0 weighting
    w = σ_t²/α_t² (gradient on x0 = Δ); the CFG reward (3.6-3.7), of the same form, takes it too.
    """

    name = "ikl"

    def __init__(self, normalize: bool = False) -> None:
        self.normalize = normalize

    def x0_weight(self, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
        return sigma_t**2 / alpha_t**2

    def predictions(self, x_t: Tensor, fake_x0: X0Fn, real_x0: Callable[[Tensor], R]) -> tuple[Tensor, R]:
        """Both networks on sg(x_t) without a graph, the reference first."""
        with torch.no_grad():
            real = real_x0(x_t.detach())
            return fake_x0(x_t.detach()), real

    def generator_term(
        self,
        x_t: Tensor,
        x0: Tensor,
        noise: Tensor,
        *,
        alpha_t: Tensor,
        sigma_t: Tensor,
        fake: Tensor,
        real: Tensor,
        weight: Tensor | float | None = None,
    ) -> Tensor:
        """§6: L_IKL = w(t) sg(s_ψ(x_t) − s_ref(x_t))ᵀ x_t, per sample (B,); gradient through x_t only.

        Its θ-gradient is that of ∫ w(t) KL(p_θ,t ‖ p_ref,t) dt (the score-parameter term vanishes in
        expectation). With ``normalize`` each sample is divided by DMD2's mean|x0 − x̂0_ref|.
        """
        x_in = x_t.detach()
        y_t = (score_from_x0(x_in, fake, alpha_t, sigma_t) - score_from_x0(x_in, real, alpha_t, sigma_t)).detach()
        term = (y_t * x_t).flatten(1).sum(dim=1)
        if self.normalize:
            term = term / dmd2_normalizer(x0, real)
        return apply_weight(term, weight)


def dmd2_normalizer(x0: Tensor, real_x0: Tensor) -> Tensor:
    """DMD2's per-sample normaliser mean|x0 − x̂0_ref| over sample dimensions, shape (B,), detached."""
    return (x0 - real_x0).detach().abs().flatten(1).mean(dim=1).clamp_min(1e-12)


def make_divergence(
    name: DivergenceName,
    *,
    huber_c: Tensor | float = 1.0,
    huber_c_units: HuberUnits = "score",
    normalize: bool = False,
) -> Divergence:
    """The divergence called ``name`` (``"pseudo_huber"``, ``"l2"`` or ``"ikl"``); ``huber_c`` in
    ``huber_c_units`` as :class:`~distar.objectives.presets.ObjectiveConfig` takes them."""
    if normalize and name != IKL.name:
        raise ValueError("per-sample normalisation is defined for the IKL divergence only")
    if name == PseudoHuber.name:
        if not isinstance(huber_c, Tensor) and huber_c <= 0:
            raise ValueError(f"pseudo-Huber c must be > 0, got {huber_c}")
        return PseudoHuber(huber_c, huber_c_units)
    if name == L2.name:
        return L2()
    if name == IKL.name:
        return IKL(normalize)
    raise ValueError(f"unknown divergence {name!r} (expected 'pseudo_huber', 'l2' or 'ikl')")


# ---------------------------------------------------------------- the CFG reward (docs/math.md §5, Eq. 3.6-3.7)

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


# ---------------------------------------------------------------- the generator loss (docs/math.md §4, Eq. 3.4)

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
    fake, real = divergence.predictions(x_t, fake_x0, real_x0)
    return divergence.generator_term(
        x_t, x0, noise, alpha_t=alpha_t, sigma_t=sigma_t, fake=fake, real=real, weight=weight
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
        fake, (real, pair) = dist.predictions(x_t, fake_x0, reference)
        divergence = dist.generator_term(x_t, x0, noise, alpha_t=a, sigma_t=s, fake=fake, real=real, weight=weight)
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
