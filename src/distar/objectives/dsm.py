"""Denoising score matching for the assistant (docs/math.md §1, Eq. 2.2)."""

from __future__ import annotations

from torch import Tensor

from distar.diffusion.param import PredictionType
from distar.objectives.divergences import per_sample


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
