"""Fixtures for the math tests."""

import pytest
import torch

from gaussian_world import DIM, GaussianWorld

from distar.diffusion import FlowMatchSchedule


#: (α_t, σ_t) of the test world: a VP point (α² + σ² = 1) and a shifted rectified-flow point
#: (SD3's shift 3 at u = 0.3: t = 0.5625, α_t = 1 − t, σ_t = t).
_FLOW = FlowMatchSchedule(shift=3.0)
_FLOW_T = _FLOW.shifted(torch.tensor(0.3, dtype=torch.float64))
SCHEDULE_POINTS = {"vp": (0.8, 0.6), "flow": (float(_FLOW.alpha(_FLOW_T)), float(_FLOW.sigma(_FLOW_T)))}


@pytest.fixture(params=sorted(SCHEDULE_POINTS))
def world(request) -> GaussianWorld:
    alpha, sigma = SCHEDULE_POINTS[request.param]
    g = torch.Generator().manual_seed(0)
    A = (torch.eye(DIM, dtype=torch.float64) * 0.7 + 0.2 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64))
    L = torch.eye(DIM, dtype=torch.float64) + 0.4 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64).tril()
    return GaussianWorld(
        A=A.requires_grad_(True),
        b=torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64, requires_grad=True),
        mu_ref=torch.tensor([-0.4, 0.8, 1.2], dtype=torch.float64),
        cov_ref=L @ L.T,
        alpha=alpha,
        sigma=sigma,
    )
