"""Conversions between ε-, x0-, v- and flow-velocity predictions and scores (docs/math.md §1).

All functions take ``alpha_t``/``sigma_t`` already broadcastable to ``x_t`` (see
:func:`distar.diffusion.schedule.expand_like`). Prediction-type names follow diffusers:
``"epsilon"``, ``"sample"`` (x0), ``"v_prediction"`` and ``"flow_prediction"`` (the rectified-flow
velocity u = ε − x0 that SD3, FLUX and SANA transformers predict).
"""

from __future__ import annotations

from typing import Callable, Literal

from torch import Tensor

PredictionType = Literal["epsilon", "sample", "v_prediction", "flow_prediction"]


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x̂0 = (x_t − σ_t ε̂) / α_t."""
    return (x_t - sigma_t * eps) / alpha_t


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """ε̂ = (x_t − α_t x̂0) / σ_t."""
    return (x_t - alpha_t * x0) / sigma_t


def x0_from_v(x_t: Tensor, v: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x̂0 = (α_t x_t − σ_t v̂) / (α_t² + σ_t²), with v = α_t ε − σ_t x0 (= α_t x_t − σ_t v̂ for VP)."""
    return (alpha_t * x_t - sigma_t * v) / (alpha_t**2 + sigma_t**2)


def v_from_x0(x_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """v = α_t ε − σ_t x0 with ε = (x_t − α_t x0)/σ_t."""
    return alpha_t * eps_from_x0(x_t, x0, alpha_t, sigma_t) - sigma_t * x0


def x0_from_flow(x_t: Tensor, u: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x̂0 = (x_t − σ_t û) / (α_t + σ_t), with u = ε − x0 (= x_t − t û for rectified flow, §1)."""
    return (x_t - sigma_t * u) / (alpha_t + sigma_t)


def flow_from_x0(x_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """u = ε − x0 with ε = (x_t − α_t x0)/σ_t: the velocity d x_t/dt of x_t = (1 − t) x0 + t ε."""
    return eps_from_x0(x_t, x0, alpha_t, sigma_t) - x0


def score_from_x0(x_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """s(x_t) = −(x_t − α_t x̂0) / σ_t² (Tweedie)."""
    return -(x_t - alpha_t * x0) / sigma_t**2


def x0_from_score(x_t: Tensor, score: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x̂0 = (x_t + σ_t² s) / α_t."""
    return (x_t + sigma_t**2 * score) / alpha_t


def _passthrough(x_t: Tensor, value: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    return value


_TO_X0 = {"sample": _passthrough, "epsilon": x0_from_eps, "v_prediction": x0_from_v, "flow_prediction": x0_from_flow}
_FROM_X0 = {"sample": _passthrough, "epsilon": eps_from_x0, "v_prediction": v_from_x0, "flow_prediction": flow_from_x0}


def _conversion(table: dict[str, Callable[..., Tensor]], prediction_type: str) -> Callable[..., Tensor]:
    if prediction_type not in table:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return table[prediction_type]


def to_x0(
    prediction: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, prediction_type: PredictionType
) -> Tensor:
    """A network's raw output, of the given type, as an x0-prediction."""
    return _conversion(_TO_X0, prediction_type)(x_t, prediction, alpha_t, sigma_t)


def from_x0(
    x0: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, prediction_type: PredictionType
) -> Tensor:
    """An x0-prediction expressed in the given prediction type (inverse of :func:`to_x0`)."""
    return _conversion(_FROM_X0, prediction_type)(x_t, x0, alpha_t, sigma_t)
