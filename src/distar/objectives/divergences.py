"""The divergences of the generator loss, one class each (docs/math.md §3 Eq. 3.2, §4 Eq. 3.8, §6).

Each class owns what is particular to it: the distance d(y) and its gradient d'(y) (score
divergences), the time weighting w(t) it gets under ``weighting: x0``, and, for the pseudo-Huber
distance, the units of its constant c. :class:`IKL` is their peer for the Integral-KL baselines.

``y`` is a per-sample score difference in score units, shape (B, ...); ``d`` returns (B,) and
``d_prime`` has the shape of ``y``. Weightings (open choices of the paper):

- ``"uniform"``: w(t) = 1, everything in score units (the form Theorem 3.1 is stated in);
- ``"x0"``: w(t) such that the per-sample term has unit coefficient in x0 space (§4), which keeps
  magnitudes comparable across t for latent models, where score units explode as σ_t → 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
from torch import Tensor

Weighting = Literal["uniform", "x0"]
HuberUnits = Literal["x0_per_sqrt_dim", "score"]
DivergenceName = Literal["pseudo_huber", "l2", "ikl"]


def sq_norm(y: Tensor) -> Tensor:
    """‖y‖² per sample: (B, ...) -> (B,)."""
    return y.flatten(1).pow(2).sum(dim=1)


def per_sample(v: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or (B,) value as (B, 1, ..., 1), broadcastable against ``like``."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim())) if v.dim() else v


class Divergence(ABC):
    """One divergence of Eq. (3.1): a name, and its w(t) under each weighting."""

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


class ScoreDivergence(Divergence):
    """d ≥ 0 with d(y) = 0 iff y = 0 (Eq. 3.2)."""

    @abstractmethod
    def d(self, y: Tensor) -> Tensor:
        """d(y), shape (B,)."""

    @abstractmethod
    def d_prime(self, y: Tensor) -> Tensor:
        """∇_y d(y), same shape as ``y``."""


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

    Not a score divergence: its loss is :func:`~distar.objectives.di_star.ikl_loss`. x0 weighting
    w = σ_t²/α_t² (gradient on x0 = Δ); the CFG reward (3.6-3.7), of the same form, takes it too.
    """

    name = "ikl"

    def __init__(self, normalize: bool = False) -> None:
        self.normalize = normalize

    def x0_weight(self, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
        return sigma_t**2 / alpha_t**2


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
