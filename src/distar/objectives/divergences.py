"""Distance functions d(y) of the score divergence (di-star-math.md Eq. 3.2, 3.8).

``y`` is a per-sample score difference in score units, shape (B, ...). ``d`` returns (B,) and
``d_prime`` its gradient with the shape of ``y``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


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


class ScoreDivergence(ABC):
    """d ≥ 0 with d(y) = 0 iff y = 0."""

    name: str

    @abstractmethod
    def d(self, y: Tensor) -> Tensor:
        """d(y), shape (B,)."""

    @abstractmethod
    def d_prime(self, y: Tensor) -> Tensor:
        """∇_y d(y), same shape as ``y``."""


class L2(ScoreDivergence):
    """d(y) = ‖y‖² (Fisher divergence; SiD is this case)."""

    name = "l2"

    def d(self, y: Tensor) -> Tensor:
        return sq_norm(y)

    def d_prime(self, y: Tensor) -> Tensor:
        return 2.0 * y


class PseudoHuber(ScoreDivergence):
    """Eq. (3.8): d(y) = sqrt(‖y‖² + c²) − c, d'(y) = y / sqrt(‖y‖² + c²).

    ``c`` is in score units; a (B,) tensor gives one c per sample (e.g. a constant in x0 units
    converted with α_t/σ_t², see :mod:`distar.objectives.weighting`).
    """

    name = "pseudo_huber"

    def __init__(self, c: Tensor | float = 1.0) -> None:
        if not bool(torch.all(torch.as_tensor(c) > 0)):
            raise ValueError(f"pseudo-Huber c must be > 0, got {c}")
        self.c = c

    def d(self, y: Tensor) -> Tensor:
        c = torch.as_tensor(self.c, dtype=y.dtype, device=y.device)
        return torch.sqrt(sq_norm(y) + c**2) - c

    def d_prime(self, y: Tensor) -> Tensor:
        c = torch.as_tensor(self.c, dtype=y.dtype, device=y.device)
        return y / per_sample(torch.sqrt(sq_norm(y) + c**2), y)
