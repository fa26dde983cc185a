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
    FlowMatchSchedule,
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


@pytest.mark.parametrize(
    "config, image_seq_len",
    [
        ({"shift": 3.0}, None),  # SD3 / SD3.5
        ({"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
          "max_image_seq_len": 4096}, 1024),  # FLUX.1 at 512 x 512
        ({"use_dynamic_shifting": True, "time_shift_type": "linear", "base_shift": 0.5, "max_shift": 1.15}, 4096),
    ],
)
def test_flow_schedule_matches_diffusers(config, image_seq_len):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config)
    schedule = FlowMatchSchedule.from_scheduler_config(scheduler.config, image_seq_len=image_seq_len)
    u = torch.linspace(1.0, 0.1, 7)
    mu = None
    if config.get("use_dynamic_shifting"):
        slope = (config["max_shift"] - config["base_shift"]) / (4096 - 256)
        mu = config["base_shift"] + slope * (image_seq_len - 256)
    scheduler.set_timesteps(sigmas=u.tolist(), mu=mu)
    torch.testing.assert_close(schedule.shifted(u), scheduler.sigmas[:-1])
    # forward process and one Euler step on the velocity u = ε − x0 both match the scheduler
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    t = scheduler.sigmas[2].repeat(2)
    x_t = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(x_t, scheduler.scale_noise(x0, scheduler.timesteps[2:3], noise))
    a, s = expand_like(schedule.alpha(t), x0), expand_like(schedule.sigma(t), x0)
    velocity = from_x0(x0, x_t, a, s, "flow_prediction")
    torch.testing.assert_close(velocity, noise - x0, atol=1e-5, rtol=1e-5)
    scheduler._step_index = 2
    stepped = scheduler.step(velocity, scheduler.timesteps[2], x_t, return_dict=False)[0]
    torch.testing.assert_close(stepped, schedule.add_noise(x0, noise, scheduler.sigmas[3].repeat(2)), atol=1e-5, rtol=1e-5)


def test_flow_schedule_reads_sana_dpm_solver_config():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    assert FlowMatchSchedule.from_scheduler_config(scheduler.config).shift == 3.0
    with pytest.raises(ValueError, match="image_seq_len"):
        FlowMatchSchedule.from_scheduler_config({"use_dynamic_shifting": True})


def test_flow_sample_t_is_shifted_uniform():
    s = FlowMatchSchedule(shift=3.0)
    t = s.sample_t(20_000, 0.0, 1.0, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    # P(t <= shift(1/2)) = 1/2: the shift maps the uniform median to s/(1 + s)
    torch.testing.assert_close(t.median(), torch.tensor(0.75), atol=0.01, rtol=0)
    torch.testing.assert_close(s.alpha(t) + s.sigma(t), torch.ones_like(t))


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


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction", "flow_prediction"])
def test_prediction_conversions_round_trip(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    a, s = torch.rand(8, 1, generator=g) * 0.9 + 0.05, torch.rand(8, 1, generator=g) * 0.9 + 0.05
    x_t = a * x0 + s * eps
    pred = from_x0(x0, x_t, a, s, prediction_type)
    torch.testing.assert_close(to_x0(pred, x_t, a, s, prediction_type), x0)
    if prediction_type == "epsilon":
        torch.testing.assert_close(pred, eps)
    if prediction_type == "flow_prediction":
        torch.testing.assert_close(pred, eps - x0)
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
    for kind in ("epsilon", "v_prediction", "flow_prediction", "sample"):
        native = (from_x0(x0_hat, x_t, A, S, kind) - from_x0(x0, x_t, A, S, kind)).pow(2).mean(1)
        torch.testing.assert_close(dsm_loss(x0_hat, x0, native_dsm_weight(a, s, kind)), native)


def test_math_modules_import_no_model_libraries():
    code = (
        "import sys, distar.diffusion, distar.objectives; "
        "bad = [m for m in ('diffusers', 'transformers', 'accelerate', 'PIL') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "LCMScheduler"])
def test_zero_snr_schedule_is_the_schedulers_own_table(name):
    diffusers = pytest.importorskip("diffusers")
    scheduler = getattr(diffusers, name)(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
    )
    schedule = DiscreteSchedule.from_scheduler(scheduler)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=0, atol=0)
    t = torch.tensor([0, 500, 999])
    expected = scheduler.alphas_cumprod[t].sqrt()
    torch.testing.assert_close(schedule.alpha(t), expected, rtol=1e-6, atol=1e-7)
    assert schedule.zero_terminal_snr == (name != "EulerDiscreteScheduler")  # Euler keeps 2**-24 at the end
    with pytest.raises(ValueError, match="from_scheduler"):
        DiscreteSchedule.from_scheduler_config(scheduler.config)
