"""Fixtures for the math tests."""

import pytest
import torch

from gaussian_world import DIM, GaussianWorld


@pytest.fixture
def world() -> GaussianWorld:
    g = torch.Generator().manual_seed(0)
    A = (torch.eye(DIM, dtype=torch.float64) * 0.7 + 0.2 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64))
    L = torch.eye(DIM, dtype=torch.float64) + 0.4 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64).tril()
    return GaussianWorld(
        A=A.requires_grad_(True),
        b=torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64, requires_grad=True),
        mu_ref=torch.tensor([-0.4, 0.8, 1.2], dtype=torch.float64),
        cov_ref=L @ L.T,
        alpha=0.8,
        sigma=0.6,
    )
