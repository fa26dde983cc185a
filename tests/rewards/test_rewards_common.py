"""Properties every reward shares: gradients, batching, frozen eval mode, dtypes, weighted sums."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distar.rewards import REWARD_NAMES, Reward, RewardSpec, WeightedReward, build_reward, load_reward


@pytest.fixture(scope="module")
def rewards(tiny_paths: dict[str, Path]) -> dict[str, Reward]:
    return {name: load_reward(name, path=str(tiny_paths[name])) for name in REWARD_NAMES}


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_gradients_reach_images_and_not_parameters(rewards: dict[str, Reward], name: str, images, prompts) -> None:
    x = images.clone().requires_grad_(True)
    scores = rewards[name].score(x, prompts)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # each image's score depends on that image only
    x.grad = None
    rewards[name].score(x, prompts)[1].backward()
    assert x.grad[1].abs().sum() > 0 and x.grad[0].abs().sum() == 0 and x.grad[2].abs().sum() == 0
    assert all(not p.requires_grad for p in rewards[name].parameters())


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_batched_scores_equal_per_image_scores(rewards: dict[str, Reward], name: str, images, prompts) -> None:
    with torch.no_grad():
        batched = rewards[name].score(images, prompts)
        single = torch.cat([rewards[name].score(images[i : i + 1], prompts[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_stays_in_eval_mode(rewards: dict[str, Reward], name: str) -> None:
    reward = rewards[name]
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules())


def test_prompt_dependence(rewards: dict[str, Reward], images) -> None:
    """Text-conditioned rewards change with the prompt; the aesthetic score ignores it."""
    with torch.no_grad():
        for name, reward in rewards.items():
            a = reward.score(images[:1], ["a red cat"])
            b = reward.score(images[:1], ["three green triangles at the bottom"])
            assert torch.equal(a, b) == (name == "aesthetic"), name


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_bfloat16_weights(tiny_paths: dict[str, Path], rewards: dict[str, Reward], name: str, images, prompts) -> None:
    reward = load_reward(name, path=str(tiny_paths[name]), dtype="bfloat16")
    assert next(iter(p for p in reward.parameters() if p.is_floating_point())).dtype == torch.bfloat16
    x = images.clone().requires_grad_(True)
    scores = reward.score(x, prompts)
    scores.sum().backward()
    assert scores.dtype == torch.float32 and x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        reference = rewards[name].score(images, prompts)
    scale = reference.abs().max().clamp_min(1e-3)
    assert ((scores.detach() - reference).abs() / scale).max() < 0.1


def test_autocast_bfloat16(rewards: dict[str, Reward], images, prompts) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = rewards["pickscore"].score(images, prompts)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_weighted_reward_combination(tiny_paths: dict[str, Path], rewards: dict[str, Reward], images, prompts) -> None:
    specs = [RewardSpec("pickscore", weight=100.0, path=str(tiny_paths["pickscore"])),
             RewardSpec("hpsv2.1", weight=10.0, path=str(tiny_paths["hpsv2.1"]))]
    combined = build_reward(specs)
    assert isinstance(combined, WeightedReward)
    x = images.clone().requires_grad_(True)
    total = combined.score(x, prompts)
    with torch.no_grad():
        expected = 100 * rewards["pickscore"].score(images, prompts) + 10 * rewards["hpsv2.1"].score(images, prompts)
        _, terms = combined.score_with_terms(images, prompts)
    torch.testing.assert_close(total.detach(), expected, atol=1e-4, rtol=1e-5)
    assert set(terms) == {"pickscore", "hpsv2.1"}
    total.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_build_reward_single_term(tiny_paths: dict[str, Path]) -> None:
    plain = build_reward([RewardSpec("clip", path=str(tiny_paths["clip"]))])
    assert not isinstance(plain, WeightedReward) and plain.name == "clip"
    scaled = build_reward([RewardSpec("clip", weight=2.0, path=str(tiny_paths["clip"]))])
    assert isinstance(scaled, WeightedReward) and scaled.weights == [2.0]
