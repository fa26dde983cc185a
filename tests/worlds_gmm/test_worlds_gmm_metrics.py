"""The gmm world's metrics and reward on cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from distar.worlds.gmm import GMMBumpReward, GMMWorld, energy_distance, evaluate_samples, tilted_samples
from distar.worlds.gmm.metrics import chi2_quantile, coverage_and_entropy, mode_masses
from distar.worlds.gmm.mixture import Components, log_prob


def _normal_abs_mean(mu: float, var: float) -> float:
    """E|N(mu, var)|."""
    s = math.sqrt(var)
    return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * var)) + mu * math.erf(mu / (s * math.sqrt(2)))


def test_energy_distance_known_answers() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    a, b = torch.zeros(7, 2), torch.tensor([[3.0, 4.0]]).expand(9, 2)
    assert energy_distance(a, b) == pytest.approx(2 * 5.0)
    # 1-D N(0, 1) vs N(mu, 1): 2 E|X − Y| − E|X − X'| − E|Y − Y'| with X − Y ~ N(−mu, 2).
    mu = 1.5
    x, y = torch.randn(4000, 1, generator=g), mu + torch.randn(4000, 1, generator=g)
    exact = 2 * _normal_abs_mean(mu, 2.0) - 2 * _normal_abs_mean(0.0, 2.0)
    assert energy_distance(x, y) == pytest.approx(exact, abs=0.03)


def test_coverage_threshold_and_entropy() -> None:
    weights = torch.tensor([0.6, 0.3, 0.1])
    covered, entropy = coverage_and_entropy(torch.tensor([0.9, 0.095, 0.005]), weights)
    assert covered.tolist() == [True, True, False]
    assert float(entropy) == pytest.approx(-(0.9 * math.log(0.9) + 0.095 * math.log(0.095) + 0.005 * math.log(0.005)))
    covered, entropy = coverage_and_entropy(torch.tensor([1.0, 0.0, 0.0]), weights)
    assert covered.tolist() == [True, False, False] and float(entropy) == 0.0
    # Entropy is of the on-mode histogram: half the mass off-mode, the rest in proportion π.
    covered, entropy = coverage_and_entropy(0.5 * weights, weights)
    assert covered.all() and float(entropy) == pytest.approx(-(weights * weights.log()).sum().item())
    covered, entropy = coverage_and_entropy(torch.zeros(3), weights)
    assert not covered.any() and float(entropy) == 0.0


@pytest.mark.parametrize("dim", [2, 5, 16])
def test_chi2_quantile_matches_scipy(dim: int) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    assert chi2_quantile(dim) == pytest.approx(scipy_stats.chi2.ppf(0.999, dim), rel=0.03)


def test_reference_samples_score_as_reference_and_collapse_is_detected() -> None:
    world = GMMWorld()
    reward = GMMBumpReward(world)
    g = torch.Generator().manual_seed(1)
    ref = [world.sample(c, 2000, g) for c in range(4)]
    other = [world.sample(c, 2000, g) for c in range(4)]
    m = evaluate_samples(world, reward, other, ref, ref)
    assert m.mode_coverage == 1.0
    h_pi = -sum(p * math.log(p) for p in (0.6, 0.3, 0.1))
    assert m.mode_entropy == pytest.approx(h_pi, abs=0.03)
    assert m.energy_distance_ref < 0.01
    assert m.off_mode_mass < 0.005  # 0.001 expected
    for c in range(4):
        torch.testing.assert_close(torch.tensor(m.mode_masses[c]), torch.tensor([0.6, 0.3, 0.1]), atol=0.03, rtol=0)
    # All mass on each prompt's favoured (reward) mode: reward near its maximum, one mode in three.
    collapsed = [world.reward_centres[c] + 0.01 * torch.randn(2000, 2, generator=g) for c in range(4)]
    m = evaluate_samples(world, reward, collapsed, ref, ref)
    assert m.mode_coverage == pytest.approx(1 / 3)
    assert m.mode_entropy == pytest.approx(0.0, abs=1e-6)
    assert m.reward > 0.99 and m.off_mode_mass == 0.0
    assert m.energy_distance_ref > 1.0
    # Mass on the bridges between modes covers nothing, however responsibilities would split it.
    bridges = []
    for c in range(4):
        a, b = world.means[c, 0], world.means[c, 1]
        bridges.append(a + torch.rand(2000, 1, generator=g).mul(0.4).add(0.3) * (b - a))
    m = evaluate_samples(world, reward, bridges, ref, ref)
    assert m.off_mode_mass == 1.0 and m.mode_coverage == 0.0 and m.mode_entropy == 0.0


def test_reward_is_bump_on_the_favoured_mode() -> None:
    world = GMMWorld()
    reward = GMMBumpReward(world)
    x = world.reward_centres.clone().requires_grad_(True)
    r = reward.score(x, world.prompts)
    torch.testing.assert_close(r, torch.ones(4))
    (grad,) = torch.autograd.grad(r.sum(), x)
    assert grad.abs().max() == 0  # maximum at the centre
    shifted = world.reward_centres + torch.tensor([0.75, 0.0])
    torch.testing.assert_close(reward.score(shifted, world.prompts), torch.full((4,), math.exp(-0.5)))
    assert not any(p.requires_grad for p in reward.parameters())


def test_tilted_samples_match_quadrature_mode_masses() -> None:
    world = GMMWorld()
    reward = GMMBumpReward(world)
    alpha, c = 3.0, 0
    draws, ess = tilted_samples(world, reward, c, alpha, 20_000, 200_000, torch.Generator().manual_seed(2))
    assert 0 < ess < 200_000
    # Exact tilted mode masses by quadrature: ∫ π_k N_k(x) exp(α r(x)) dx on a fine grid.
    axis = torch.linspace(-3.5, 3.5, 701, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    comps = world.prompt_components(c)
    tilt = (alpha * reward.score(grid.float(), [world.prompts[c]] * len(grid))).double()
    per_mode = []
    for k in range(3):
        one = Components(*(p[:, k : k + 1].double() for p in comps))
        ones = torch.ones(len(grid), dtype=torch.float64)
        per_mode.append((log_prob(grid, ones, 0 * ones, one) + tilt).exp().sum())  # includes log π_k
    exact = torch.stack(per_mode) / sum(per_mode)
    torch.testing.assert_close(mode_masses(world, c, draws).double(), exact, atol=0.015, rtol=0)
    # α = 0: the tilted target is the reference itself, every weight equal.
    _, ess0 = tilted_samples(world, reward, c, 0.0, 10, 1000, torch.Generator().manual_seed(3))
    assert ess0 == pytest.approx(1000)
