"""Theorem 3.1: the tractable loss (3.4) has the gradient of the score divergence (3.3)."""

from __future__ import annotations

import pytest
import torch
from gaussian_world import GaussianWorld, gaussian_score, relative_error

from distar.objectives import L2, PseudoHuber, ScoreDivergence, generator_loss, score_divergence_loss

N = 400_000
HUBER_C = 0.5


def explicit_divergence_grad(world: GaussianWorld, dist: ScoreDivergence) -> torch.Tensor:
    """∇_θ E_{x ~ sg(p_θ,t)} d(s_θ,t(x) − s_ref,t(x)) with the analytic generator score."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        _, eps, x0 = world.sample(N, g)
        x = world.alpha * x0 + world.sigma * eps
    mean, cov = world.marginal(world.A, world.b)  # depends on θ
    y = gaussian_score(x, mean, cov) - gaussian_score(x, *world.ref_marginal())
    return torch.cat([t.flatten() for t in torch.autograd.grad(dist.d(y).mean(), [world.A, world.b])])


def tractable_grad(world: GaussianWorld, divergence: str = "", dist: ScoreDivergence | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    _, eps, x0 = world.sample(N, g)
    a, s = torch.tensor(world.alpha, dtype=x0.dtype), torch.tensor(world.sigma, dtype=x0.dtype)
    if dist is None:
        loss = generator_loss(
            x0, eps, alpha_t=a, sigma_t=s, fake_x0=world.fake_x0(), real_x0=world.real_x0(),
            divergence=divergence, huber_c=HUBER_C,
        )
    else:
        loss = score_divergence_loss(
            x0, eps, alpha_t=a, sigma_t=s, fake_x0=world.fake_x0(), real_x0=world.real_x0(), divergence=dist
        )
    assert loss.shape == (N,)
    return torch.cat([t.flatten() for t in torch.autograd.grad(loss.mean(), [world.A, world.b])])


@pytest.mark.parametrize("divergence, dist", [("l2", L2()), ("pseudo_huber", PseudoHuber(HUBER_C))])
def test_generator_loss_gradient_matches_score_divergence(world, divergence, dist):
    expected = explicit_divergence_grad(world, dist)
    got = tractable_grad(world, divergence)
    assert relative_error(got, expected) < 0.015


class DetachedPseudoHuber(PseudoHuber):
    """The common shortcut: d'(y_t) evaluated on a detached x_t (wrong, §4)."""

    def d_prime(self, y: torch.Tensor) -> torch.Tensor:
        return super().d_prime(y.detach())


def test_detaching_d_prime_breaks_the_theorem(world):
    """The same check with d'(y) detached is off by far more than the Monte-Carlo error."""
    expected = explicit_divergence_grad(world, PseudoHuber(HUBER_C))
    full = relative_error(tractable_grad(world, dist=PseudoHuber(HUBER_C)), expected)
    detached = relative_error(tractable_grad(world, dist=DetachedPseudoHuber(HUBER_C)), expected)
    print(f"relative gradient error: full {full:.4f}, detached d'(y) {detached:.4f}")
    assert full < 0.015
    assert detached > 0.05


def test_gradient_is_zero_at_the_reference(world):
    """When the generator equals the reference, both the divergence and its gradient vanish."""
    chol = torch.linalg.cholesky(world.cov_ref)
    world.A = chol.clone().requires_grad_(True)
    world.b = world.mu_ref.clone().requires_grad_(True)
    grad = tractable_grad(world, "pseudo_huber")
    assert grad.abs().max() < 1e-8
