"""A Gaussian world where every score is exact (docs/math.md §4, the Gaussian test world).

Generator x0 = A z + b (θ = (A, b)), reference N(μ_r, Σ_r); noising at a fixed t (VP or rectified flow) keeps every
marginal Gaussian, so s_θ,t and s_ref,t are affine functions known in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DIM = 3


def gaussian_score(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """∇_x log N(x; mean, cov) for rows of x."""
    return -torch.linalg.solve(cov, (x - mean).T).T


def gaussian_log_density(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


@dataclass
class GaussianWorld:
    A: Tensor  # generator scale, requires grad
    b: Tensor  # generator shift, requires grad
    mu_ref: Tensor
    cov_ref: Tensor
    alpha: float
    sigma: float

    def marginal(self, A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and covariance of p_θ,t for generator (A, b)."""
        eye = torch.eye(DIM, dtype=A.dtype)
        return self.alpha * b, self.alpha**2 * A @ A.T + self.sigma**2 * eye

    def ref_marginal(self, mu: Tensor | None = None, cov: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu = self.mu_ref if mu is None else mu
        cov = self.cov_ref if cov is None else cov
        eye = torch.eye(DIM, dtype=cov.dtype)
        return self.alpha * mu, self.alpha**2 * cov + self.sigma**2 * eye

    def x0_from_score_fn(self, mean: Tensor, cov: Tensor):
        """x ↦ x̂0 = (x + σ² s(x))/α for the Gaussian N(mean, cov) at time t."""
        return lambda x: (x + self.sigma**2 * gaussian_score(x, mean, cov)) / self.alpha

    def fake_x0(self):
        """The assistant: the exact score of the *current* generator, parameters frozen."""
        mean, cov = self.marginal(self.A.detach(), self.b.detach())
        return self.x0_from_score_fn(mean, cov)

    def real_x0(self):
        return self.x0_from_score_fn(*self.ref_marginal())

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """z, ε and x0 = A z + b (x0 carries the graph to θ)."""
        z = torch.randn(n, DIM, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, DIM, generator=generator, dtype=torch.float64)
        return z, eps, z @ self.A.T + self.b


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())
