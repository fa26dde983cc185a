"""Schedules (2.1), parametrisations (§1), CFG (3.5) and DSM (2.2)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from gaussian_world import DIM, gaussian_score

from distar.diffusion import (
    ContinuousVPSchedule,
    DiscreteSchedule,
    cfg_combine,
    expand_like,
    from_x0,
    score_from_x0,
    to_x0,
    x0_from_score,
)
from distar.objectives import dsm_loss, native_dsm_weight


@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},  # SD 1.5 / SDXL
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
    ],
)
def test_discrete_schedule_matches_diffusers(config):
    diffusers = pytest.importorskip("diffusers")
    for cls in (diffusers.DDPMScheduler, diffusers.EulerDiscreteScheduler):
        scheduler = cls(num_train_timesteps=1000, **config)
        schedule = DiscreteSchedule.from_scheduler_config(scheduler.config)
        torch.testing.assert_close(schedule.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=0, atol=1e-7)
        t = torch.tensor([0, 399, 999])
        g = torch.Generator().manual_seed(0)
        x0, noise = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
        if cls is diffusers.DDPMScheduler:
            torch.testing.assert_close(schedule.add_noise(x0, noise, t), scheduler.add_noise(x0, noise, t))
            v = from_x0(x0, schedule.add_noise(x0, noise, t), expand_like(schedule.alpha(t), x0),
                        expand_like(schedule.sigma(t), x0), "v_prediction")
            # float32 round-off of ε = (x_t − α x0)/σ, not a formula difference
            torch.testing.assert_close(v, scheduler.get_velocity(x0, noise, t), atol=1e-4, rtol=1e-4)


def test_continuous_schedules_are_variance_preserving():
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64)
    for kind in ("linear", "cosine"):
        s = ContinuousVPSchedule(kind)
        torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))
        assert bool((s.alpha(t)[1:] < s.alpha(t)[:-1]).all()), "α_t must decrease"


def test_sample_t_stays_in_range():
    s = DiscreteSchedule.from_betas()
    t = s.sample_t(10_000, 0.02, 0.98, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) >= 20 and int(t.max()) <= 979
    with pytest.raises(ValueError):
        s.sample_t(4, 0.5, 0.2)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_prediction_conversions_round_trip(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    a, s = torch.rand(8, 1, generator=g) * 0.9 + 0.05, torch.rand(8, 1, generator=g) * 0.9 + 0.05
    x_t = a * x0 + s * eps
    pred = from_x0(x0, x_t, a, s, prediction_type)
    torch.testing.assert_close(to_x0(pred, x_t, a, s, prediction_type), x0)
    if prediction_type == "epsilon":
        torch.testing.assert_close(pred, eps)
    # score of the forward kernel: −ε/σ, and x0 ↔ score
    torch.testing.assert_close(score_from_x0(x_t, x0, a, s), -eps / s)
    torch.testing.assert_close(x0_from_score(x_t, score_from_x0(x_t, x0, a, s), a, s), x0)


def test_cfg_combine_is_eq_3_5():
    c, u = torch.randn(4), torch.randn(4)
    torch.testing.assert_close(cfg_combine(c, u, 1.0), c)
    torch.testing.assert_close(cfg_combine(c, u, 0.0), u)
    torch.testing.assert_close(cfg_combine(c, u, 7.5), u + 7.5 * (c - u))


def test_dsm_recovers_the_exact_gaussian_score():
    """An affine x0-denoiser trained by (2.2) on Gaussian data equals Tweedie's denoiser."""
    torch.manual_seed(0)
    alpha, sigma = 0.7, 0.714
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    L = torch.tensor([[1.0, 0, 0], [0.5, 0.8, 0], [-0.3, 0.2, 0.6]], dtype=torch.float64)
    x0 = torch.randn(200_000, DIM, dtype=torch.float64) @ L.T + mu
    x_t = alpha * x0 + sigma * torch.randn_like(x0)
    denoiser = torch.nn.Linear(DIM, DIM, dtype=torch.float64)
    opt = torch.optim.LBFGS(denoiser.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = dsm_loss(denoiser(x_t), x0).mean()
        loss.backward()
        return loss

    opt.step(closure)
    probe = torch.randn(100, DIM, dtype=torch.float64)
    cov_t = alpha**2 * L @ L.T + sigma**2 * torch.eye(DIM, dtype=torch.float64)
    exact = gaussian_score(probe, alpha * mu, cov_t)
    learned = score_from_x0(probe, denoiser(probe).detach(), alpha, sigma)
    assert float((learned - exact).norm() / exact.norm()) < 0.02


def test_native_dsm_weight_equals_native_mse():
    g = torch.Generator().manual_seed(1)
    x0, eps, x0_hat = (torch.randn(6, 4, generator=g) for _ in range(3))
    a = torch.rand(6, generator=g) * 0.9 + 0.05
    s = (1 - a**2).sqrt()
    A, S = a[:, None], s[:, None]
    x_t = A * x0 + S * eps
    for kind in ("epsilon", "v_prediction", "sample"):
        native = (from_x0(x0_hat, x_t, A, S, kind) - from_x0(x0, x_t, A, S, kind)).pow(2).mean(1)
        torch.testing.assert_close(dsm_loss(x0_hat, x0, native_dsm_weight(a, s, kind)), native)


def test_math_modules_import_no_model_libraries():
    code = (
        "import sys, distar.diffusion, distar.objectives; "
        "bad = [m for m in ('diffusers', 'transformers', 'accelerate', 'PIL') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
