"""The gmm world's analytic mixture scores against autograd and against Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from distar.diffusion import ContinuousVPSchedule, x0_from_score
from distar.protocols import Backend
from distar.worlds.gmm import GMMBackend, GMMWorld, GMMWorldConfig
from distar.worlds.gmm.mixture import Components, log_prob, posterior_mean, responsibilities, score

TIMES = [0.001, 0.02, 0.1, 0.3, 0.6, 0.98]


def _random_components(batch: int, k: int, d: int, seed: int) -> Components:
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(batch, k, d, generator=g, dtype=torch.float64)
    log_w = torch.log_softmax(torch.randn(batch, k, generator=g, dtype=torch.float64), -1)
    variances = 0.05 + torch.rand(batch, k, generator=g, dtype=torch.float64)
    return Components(means, log_w, variances)


@pytest.mark.parametrize("t", TIMES)
@pytest.mark.parametrize("d", [2, 5])
def test_score_is_gradient_of_log_density(t: float, d: int) -> None:
    sched = ContinuousVPSchedule("linear")
    comps = _random_components(16, 3, d, seed=d)
    tt = torch.full((16,), t, dtype=torch.float64)
    alpha_t, sigma_t = sched.alpha(tt), sched.sigma(tt)
    x_t = (alpha_t[:, None] * 2 * torch.randn(16, d, dtype=torch.float64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x_t, alpha_t, sigma_t, comps).sum(), x_t)
    torch.testing.assert_close(score(x_t, alpha_t, sigma_t, comps), grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t", TIMES)
def test_posterior_mean_is_tweedie(t: float) -> None:
    sched = ContinuousVPSchedule("linear")
    comps = _random_components(8, 4, 3, seed=1)
    tt = torch.full((8,), t, dtype=torch.float64)
    alpha_t, sigma_t = sched.alpha(tt), sched.sigma(tt)
    x_t = torch.randn(8, 3, dtype=torch.float64)
    tweedie = x0_from_score(x_t, score(x_t, alpha_t, sigma_t, comps), alpha_t[:, None], sigma_t[:, None])
    torch.testing.assert_close(posterior_mean(x_t, alpha_t, sigma_t, comps), tweedie, rtol=1e-7, atol=1e-7)


def test_noised_density_matches_monte_carlo() -> None:
    """log p_t from the formula against a histogram-free check: E_{x0}[N(x_t; α x0, σ² I)]."""
    world = GMMWorld(GMMWorldConfig(dim=2))
    comps = world.prompt_components(1)
    x0 = world.sample(1, 400_000, torch.Generator().manual_seed(0)).double()
    alpha, sigma = torch.tensor([0.8], dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64)
    x_t = torch.tensor([[1.0, 0.5], [-1.2, 0.9], [0.0, 0.0]], dtype=torch.float64)
    kernel = torch.exp(-((x_t[:, None] - alpha * x0[None]) ** 2).sum(-1) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    mc = kernel.mean(1).log()
    exact = log_prob(x_t, alpha.expand(3), sigma.expand(3), Components(*(p.double() for p in comps)))
    torch.testing.assert_close(exact, mc, rtol=0, atol=0.02)


def test_marginal_is_prompt_average_and_responsibilities_sum_to_one() -> None:
    world = GMMWorld()
    x = torch.randn(32, 2) * 2
    one, zero = torch.ones(32), torch.zeros(32)
    per_prompt = torch.stack([log_prob(x, one, zero, world.prompt_components(c)) for c in range(4)])
    expected = torch.logsumexp(per_prompt, 0) - math.log(4)
    torch.testing.assert_close(log_prob(x, one, zero, world.marginal()), expected)
    torch.testing.assert_close(responsibilities(x, one, zero, world.marginal()).sum(-1), one)


def test_world_layout_and_validation() -> None:
    world = GMMWorld()
    assert world.mode_locations.tolist() == [[0, 3, 6], [2, 5, 0], [4, 7, 2], [6, 1, 4]]
    assert torch.allclose(world.log_weights.exp().sum(-1), torch.ones(4))
    torch.testing.assert_close(world.reward_centres, world.means[:, 2])
    assert GMMWorld(GMMWorldConfig(dim=8)).means[..., 2:].abs().max() == 0
    GMMWorldConfig(num_locations=6, mode_stride=2)  # modes at 0, 2, 4
    with pytest.raises(ValueError, match="two modes"):
        GMMWorldConfig(num_locations=6, mode_stride=3)  # 0, 3, 0 collide
    with pytest.raises(KeyError, match="valid"):
        world.prompt_index(["a cat"])


def test_backend_reference_is_exact_cond_and_uncond() -> None:
    world = GMMWorld()
    backend = GMMBackend(world)
    assert isinstance(backend, Backend)
    cond = backend.encode_prompts(["prompt 0", "prompt 2", "prompt 3"])
    t = torch.tensor([0.05, 0.5, 0.9])
    x_t = torch.randn(3, 2)
    alpha_t, sigma_t = backend.schedule.alpha(t), backend.schedule.sigma(t)
    cond_x0, uncond_x0 = backend.reference_x0_cond_uncond(x_t, t, cond)
    for i, c in enumerate(cond.tolist()):
        s = score(x_t[i : i + 1], alpha_t[i : i + 1], sigma_t[i : i + 1], world.prompt_components(c))
        torch.testing.assert_close(cond_x0[i], ((x_t[i] + sigma_t[i] ** 2 * s[0]) / alpha_t[i]))
    s_u = score(x_t, alpha_t, sigma_t, world.marginal())
    torch.testing.assert_close(uncond_x0, (x_t + sigma_t[:, None] ** 2 * s_u) / alpha_t[:, None])
    assert backend.sample_latents(5).shape == (5, 2)
    assert backend.generate(backend.sample_latents(3), cond).shape == (3, 2)
    assert backend.assistant_x0(x_t, t, cond).shape == (3, 2)


def test_backend_initialisation_is_seeded_and_leaves_global_rng_alone() -> None:
    world = GMMWorld()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a, b, c = GMMBackend(world, seed=1), GMMBackend(world, seed=1), GMMBackend(world, seed=2)
    assert torch.equal(torch.rand(3), expected)
    pa, pb, pc = (list(x.generator.parameters()) for x in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not all(torch.equal(x, y) for x, y in zip(pa, pc))
