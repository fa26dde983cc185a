"""IKL (§6) and the implicit CFG reward (Theorem 3.2) against closed-form Gaussian gradients."""

from __future__ import annotations

import torch
from gaussian_world import DIM, GaussianWorld, relative_error

from distar.objectives import cfg_reward_loss, dmd2_normalizer, generator_loss, ikl_loss

N = 400_000


def gaussian_kl(m0, c0, m1, c1) -> torch.Tensor:
    """KL(N(m0, c0) ‖ N(m1, c1))."""
    c1_inv = torch.linalg.inv(c1)
    d = m1 - m0
    return 0.5 * (torch.trace(c1_inv @ c0) + d @ c1_inv @ d - DIM + torch.logdet(c1) - torch.logdet(c0))


def expected_log_density(m, c, m1, c1) -> torch.Tensor:
    """E_{x ~ N(m, c)} log N(x; m1, c1)."""
    c1_inv = torch.linalg.inv(c1)
    d = m - m1
    return -0.5 * (torch.trace(c1_inv @ c) + d @ c1_inv @ d + torch.logdet(2 * torch.pi * c1))


def grads(value, world) -> torch.Tensor:
    return torch.cat([t.flatten() for t in torch.autograd.grad(value, [world.A, world.b])])


def scalars(world, like):
    return torch.tensor(world.alpha, dtype=like.dtype), torch.tensor(world.sigma, dtype=like.dtype)


def test_ikl_gradient_matches_closed_form_kl(world: GaussianWorld):
    expected = grads(gaussian_kl(*world.marginal(world.A, world.b), *world.ref_marginal()), world)
    _, eps, x0 = world.sample(N, torch.Generator().manual_seed(3))
    a, s = scalars(world, x0)
    loss = generator_loss(
        x0, eps, alpha_t=a, sigma_t=s, fake_x0=world.fake_x0(), real_x0=world.real_x0(), divergence="ikl"
    )
    assert relative_error(grads(loss.mean(), world), expected) < 0.015


def test_dmd2_normalisation_divides_each_sample(world: GaussianWorld):
    _, eps, x0 = world.sample(64, torch.Generator().manual_seed(4))
    a, s = scalars(world, x0)
    nets = dict(alpha_t=a, sigma_t=s, fake_x0=world.fake_x0(), real_x0=world.real_x0())
    plain = ikl_loss(x0, eps, **nets)
    normed = ikl_loss(x0, eps, **nets, normalize=True)
    real = world.real_x0()((a * x0 + s * eps).detach())
    torch.testing.assert_close(normed, plain / dmd2_normalizer(x0, real))


def test_cfg_reward_gradient_matches_closed_form(world: GaussianWorld):
    """∇_θ L_cfg = −∇_θ E_{p_θ,t}[log p_t(x|c) − log p_t(x|∅)] (Theorem 3.2)."""
    mu_u = torch.tensor([0.3, 0.1, -0.5], dtype=torch.float64)
    cov_u = 2.0 * torch.eye(DIM, dtype=torch.float64)
    cond, uncond = world.ref_marginal(), world.ref_marginal(mu_u, cov_u)
    m, c = world.marginal(world.A, world.b)
    expected = grads(-(expected_log_density(m, c, *cond) - expected_log_density(m, c, *uncond)), world)

    _, eps, x0 = world.sample(N, torch.Generator().manual_seed(5))
    a, s = scalars(world, x0)
    x_t = a * x0 + s * eps
    cond_x0 = world.x0_from_score_fn(*cond)(x_t)
    uncond_x0 = world.x0_from_score_fn(*uncond)(x_t)
    loss = cfg_reward_loss(x_t, alpha_t=a, sigma_t=s, cond_x0=cond_x0, uncond_x0=uncond_x0)
    assert relative_error(grads(loss.mean(), world), expected) < 0.015
