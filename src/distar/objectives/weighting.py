"""Time weightings w(t) and the scale of the pseudo-Huber constant (open choices of the paper).

- ``"uniform"``: w(t) = 1, everything in score units (the form Theorem 3.1 is stated in).
- ``"x0"``: w(t) chosen so that each divergence's per-sample term has unit coefficient in x0 space
  (di-star-math.md §4): pseudo-Huber w = σ_t²/α_t (term −Δᵀe/sqrt(‖Δ‖² + c_x0²)), L2 w = σ_t⁴/(2α_t²)
  (term −Δᵀe), IKL and the CFG reward w = σ_t²/α_t² (gradient on x0 = Δ). This keeps magnitudes
  comparable across t for latent models, where score units explode as σ_t → 0.
"""

from __future__ import annotations

from typing import Literal

import math

from torch import Tensor

Weighting = Literal["uniform", "x0"]
HuberUnits = Literal["x0_per_sqrt_dim", "score"]


def divergence_weight(weighting: Weighting, divergence: str, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """w(t) per sample for the divergence term, shape of ``alpha_t`` (B,)."""
    if weighting == "uniform":
        return alpha_t.new_ones(alpha_t.shape)
    if weighting != "x0":
        raise ValueError(f"unknown weighting {weighting!r}")
    if divergence == "pseudo_huber":
        return sigma_t**2 / alpha_t
    if divergence == "l2":
        return sigma_t**4 / (2 * alpha_t**2)
    if divergence in ("ikl", "cfg"):
        return sigma_t**2 / alpha_t**2
    raise ValueError(f"unknown divergence {divergence!r}")


def huber_c_in_score_units(
    huber_c: float, units: HuberUnits, alpha_t: Tensor, sigma_t: Tensor, dim: int
) -> Tensor | float:
    """The pseudo-Huber c of Eq. (3.8) in score units.

    ``"score"``: c as given. ``"x0_per_sqrt_dim"``: c_x0 = huber_c·sqrt(dim) in x0 units, i.e.
    c = c_x0 · α_t/σ_t² per sample — a scale-free choice that does not depend on image size.
    """
    if units == "score":
        return huber_c
    if units == "x0_per_sqrt_dim":
        return huber_c * math.sqrt(dim) * alpha_t / sigma_t**2
    raise ValueError(f"unknown huber_c units {units!r}")
