"""The assembled objective (3.4)/(3.6), the presets of Table 2, and Algorithm 1's two losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distar.config import ConfigError
from distar.diffusion import ContinuousVPSchedule, cfg_combine, expand_like
from distar.objectives import IKL, PRESETS, DIStarLoss, cfg_reward_loss, generator_loss, preset, preset_at, reward_loss
from distar.protocols import OneStepBackend
from distar.train.algorithm import assistant_losses, generator_losses


def batch(n=16, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g).requires_grad_(True)
    eps = torch.randn(n, d, generator=g)
    a = torch.rand(n, generator=g) * 0.8 + 0.1
    return x0, eps, a, (1 - a**2).sqrt()


def fake(x):
    return 0.9 * x


def ref_pair(x):
    return 0.5 * x + 1.0, 0.2 * x - 1.0


def test_table2_presets():
    rows = {name: (cfg.divergence, cfg.reward_scale > 0, cfg.cfg_mode) for name, cfg in
            ((n, preset(n)) for n in PRESETS)}
    assert rows["diff_instruct"] == ("ikl", False, "inner")
    assert rows["di_pp"] == ("ikl", True, "inner")
    assert rows["sim"] == ("pseudo_huber", False, "inner")
    assert rows["di_star"] == ("pseudo_huber", True, "inner")
    assert rows["di_star_out"] == ("pseudo_huber", True, "outer")
    assert preset("di_star").guidance_scale == 7.5 and preset("di_star").reward_scale == 100.0
    assert preset("di_star", reward_scale=3.0).reward_scale == 3.0
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("dpo")
    with pytest.raises(ConfigError, match="normalize"):
        preset("sim", normalize=True)


def test_preset_at_sets_only_what_the_preset_uses():
    at = dict(reward_scale=2.0, guidance_scale=1.5, cfg_reward_scale=0.5)
    inner, outer, plain = preset_at("di_star", **at), preset_at("di_star_out", **at), preset_at("sim", **at)
    assert (inner.reward_scale, inner.guidance_scale, inner.cfg_reward_scale) == (2.0, 1.5, 0.0)
    assert (outer.reward_scale, outer.guidance_scale, outer.cfg_reward_scale) == (2.0, preset("di_star_out").guidance_scale, 0.5)
    assert (plain.reward_scale, plain.guidance_scale) == (0.0, 1.5)  # no reward: α is not the preset's to take
    assert preset_at("di_pp", reward_scale=0.0).reward_scale == 0.0
    assert preset_at("di_star", huber_c=1.0).huber_c == 1.0
    assert preset_at("di_star") == preset("di_star")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_at("dpo", reward_scale=1.0)


def test_inner_cfg_uses_the_guided_reference():
    cfg = preset("sim", guidance_scale=3.0)
    x0, eps, a, s = batch()
    terms = DIStarLoss(cfg)(
        x0, eps, alpha_t=a, sigma_t=s, fake_x0=fake, ref_x0=lambda x: ref_pair(x)[0], ref_x0_pair=ref_pair
    )
    A, S = a[:, None], s[:, None]
    c = cfg.huber_c * 2.0 * A[:, 0] / S[:, 0] ** 2  # x0_per_sqrt_dim with dim 4
    w = s**2 / a  # weighting x0 for pseudo-Huber
    expected = generator_loss(
        x0, eps, alpha_t=A, sigma_t=S, fake_x0=fake, real_x0=lambda x: cfg_combine(*ref_pair(x), 3.0),
        divergence="pseudo_huber", huber_c=c, weight=w,
    )
    torch.testing.assert_close(terms["loss"], expected)
    assert set(terms) == {"loss", "divergence"}


def test_outer_cfg_adds_the_implicit_reward_with_one_reference_call():
    cfg = preset("di_star_out", reward_scale=2.0)
    x0, eps, a, s = batch()
    calls = []

    def counted_pair(x):
        calls.append(x)
        return ref_pair(x)

    reward = (x0**2).sum(1)
    terms = DIStarLoss(cfg)(
        x0, eps, alpha_t=a, sigma_t=s, fake_x0=fake, ref_x0=lambda x: ref_pair(x)[0], ref_x0_pair=counted_pair,
        reward=reward,
    )
    assert len(calls) == 1
    torch.testing.assert_close(
        terms["loss"], terms["divergence"] + cfg.cfg_reward_scale * terms["cfg"] - 2.0 * reward
    )
    # the reward enters with gradient −α ∂r/∂x0
    g_full = torch.autograd.grad(terms["loss"].sum(), x0, retain_graph=True)[0]
    g_rest = torch.autograd.grad((terms["divergence"] + cfg.cfg_reward_scale * terms["cfg"]).sum(), x0)[0]
    torch.testing.assert_close(g_full - g_rest, -2.0 * 2 * x0.detach())


@pytest.mark.parametrize("name, keys", [(name, {}) for name in sorted(PRESETS)] + [("sim", {"divergence": "l2"})])
def test_the_public_terms_with_the_config_keys_are_the_trained_loss(name, keys):
    """generator_loss with an ObjectiveConfig's huber_c, huber_c_units and weighting, plus reward_loss
    (plus α_cfg times the CFG reward in outer mode), is DIStarLoss's loss: one unit convention."""
    cfg = preset(name, reward_scale=3.0, **keys)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 3, 4, 4, generator=g).requires_grad_(True)
    eps = torch.randn(6, 3, 4, 4, generator=g)
    a = torch.rand(6, generator=g) * 0.8 + 0.1
    s = (1 - a**2).sqrt()
    reward = -(x0**2).flatten(1).mean(1)
    terms = DIStarLoss(cfg)(
        x0, eps, alpha_t=a, sigma_t=s, fake_x0=fake, ref_x0=lambda x: ref_pair(x)[0], ref_x0_pair=ref_pair,
        reward=reward,
    )
    A, S = expand_like(a, x0), expand_like(s, x0)
    inner = cfg.cfg_mode == "inner"
    divergence = generator_loss(
        x0, eps, alpha_t=A, sigma_t=S, fake_x0=fake,
        real_x0=lambda x: cfg_combine(*ref_pair(x), cfg.guidance_scale) if inner else ref_pair(x)[0],
        divergence=cfg.divergence, huber_c=cfg.huber_c, huber_c_units=cfg.huber_c_units, weighting=cfg.weighting,
        normalize=cfg.normalize,
    )
    expected = divergence + reward_loss(reward, cfg.reward_scale)
    if not inner:
        x_t = A * x0 + S * eps
        cond, uncond = ref_pair(x_t)
        weight = IKL().x0_weight(a, s)
        cfg_term = cfg_reward_loss(x_t, alpha_t=A, sigma_t=S, cond_x0=cond, uncond_x0=uncond, weight=weight)
        expected = expected + cfg.cfg_reward_scale * cfg_term
    torch.testing.assert_close(terms["loss"], expected)
    with pytest.raises(ValueError, match="not both"):
        generator_loss(x0, eps, alpha_t=A, sigma_t=S, fake_x0=fake, real_x0=fake, weighting="x0", weight=1.0)


class LinearWorld(OneStepBackend, nn.Module):
    """A minimal Backend over R^4 with linear networks, for Algorithm 1's plumbing."""

    prediction_type = "epsilon"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.schedule = ContinuousVPSchedule()
        self.generator = nn.Linear(4, 4)
        self.assistant = nn.Linear(5, 4)
        self.reference = nn.Linear(5, 4).requires_grad_(False)

    def encode_prompts(self, prompts):
        return torch.tensor([float(len(p)) for p in prompts])

    def sample_latents(self, batch_size, generator=None):
        return torch.randn(batch_size, 4, generator=generator)

    def generate(self, z, cond, step=0):
        return self.generator(z) + cond[:, None] * 0.01

    def _x0(self, net, x_t, t):
        return net(torch.cat([x_t, t[:, None].float()], dim=1))

    def reference_x0(self, x_t, t, cond):
        return self._x0(self.reference, x_t, t)

    def reference_x0_cond_uncond(self, x_t, t, cond):
        return self._x0(self.reference, x_t, t), self._x0(self.reference, x_t, t) * 0.5

    def assistant_x0(self, x_t, t, cond):
        return self._x0(self.assistant, x_t, t)

    def decode(self, x0):
        return x0

    def generator_parameters(self):
        return self.generator.parameters()

    def assistant_parameters(self):
        return self.assistant.parameters()


def test_algorithm1_losses_route_gradients():
    from distar.protocols import Backend

    world = LinearWorld()
    assert isinstance(world, Backend)
    prompts = ["a", "bb", "ccc"]
    cond, z = world.encode_prompts(prompts), world.sample_latents(3)

    dsm = assistant_losses(world, cond, z, objective=preset("sim"))
    assert dsm["loss"].shape == (3,)
    dsm["loss"].mean().backward()
    assert world.assistant.weight.grad is not None and world.generator.weight.grad is None

    class SumReward(nn.Module):
        def score(self, images, prompts):
            return images.sum(1)

    world.assistant.zero_grad(set_to_none=True)
    terms = generator_losses(
        world, cond, z, prompts=prompts, reward=SumReward(), loss=DIStarLoss(preset("di_star", reward_scale=1.0))
    )
    assert {"loss", "divergence", "reward"} <= set(terms) and terms["loss"].shape == (3,)
    terms["loss"].mean().backward()
    assert world.generator.weight.grad is not None and world.generator.weight.grad.abs().sum() > 0
    assert world.reference.weight.grad is None
