"""RewardSpec as a config section, load_reward options, and one-line errors for missing weights."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from distar.config import ConfigError, from_dict
from distar.rewards import REWARD_NAMES, TINY, RewardSpec, load_reward
from distar.rewards.clip import PickScore


def test_spec_from_config_dict() -> None:
    spec = from_dict(RewardSpec, {"name": "pickscore", "weight": 100, "form": "logit", "dtype": "bfloat16"})
    assert spec == RewardSpec("pickscore", weight=100.0, form="logit", dtype="bfloat16")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "pickscor"}, "unknown reward 'pickscor'"),
        ({"name": "clip", "form": "logit"}, "only defined for pickscore"),
        ({"name": "clip", "backbone": "x"}, "only used by aesthetic"),
        ({"name": "clip", "dtype": "fp8"}, "dtype"),
        ({"name": "clip", "wieght": 2}, "did you mean 'weight'"),
    ],
)
def test_spec_errors_are_one_line(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        from_dict(RewardSpec, data)
    assert "\n" not in str(err.value)


def test_load_reward_by_name_with_overrides(tiny_paths: dict[str, Path]) -> None:
    reward = load_reward("pickscore", path=str(tiny_paths["pickscore"]), form="logit", dtype=torch.float64)
    assert isinstance(reward, PickScore) and reward.scale > 1.0
    assert reward.model.logit_scale.dtype == torch.float64
    with pytest.raises(TypeError, match="unknown option"):
        load_reward("pickscore", pth="x")


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_tiny_path_builds_a_local_model(name: str) -> None:
    reward = load_reward(name, path=TINY)
    assert reward.name == name
    with torch.no_grad():
        assert reward.score(torch.rand(2, 3, 32, 32), ["a", "b"]).shape == (2,)


@pytest.mark.parametrize(
    ("name", "needed"),
    [
        ("pickscore", "yuvalkirstain/PickScore_v1"),
        ("clip", "openai/clip-vit-large-patch14"),
        ("hpsv2", "HPS_v2_compressed.pt"),
        ("hpsv2.1", "HPS_v2.1_compressed.pt"),
        ("imagereward", "ImageReward.pt"),
        ("aesthetic", "sac+logos+ava1-l14-linearMSE.pth"),
    ],
)
def test_missing_weights_give_one_line_error(name: str, needed: str) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_reward(name, local_files_only=True)
    assert needed in str(err.value) and "path=" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_in_local_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"HPSv2\.1 needs HPS_v2\.1_compressed\.pt .*xswu/HPSv2"):
        load_reward("hpsv2.1", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ImageReward needs med_config.json"):
        (tmp_path / "ImageReward.pt").write_bytes(b"")
        load_reward("imagereward", path=str(tmp_path))


def test_non_tensor_checkpoint_is_refused(tmp_path: Path) -> None:
    """Checkpoints are read with weights_only=True: pickled objects are rejected in one line."""
    checkpoint = {"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1.0)}
    torch.save(checkpoint, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(ConfigError, match="not a plain tensor checkpoint") as err:
        load_reward("hpsv2", path=str(tmp_path))
    assert "\n" not in str(err.value)


def test_mismatched_checkpoint_is_refused(tmp_path: Path, tiny_paths: dict[str, Path]) -> None:
    state = torch.load(tiny_paths["hpsv2"] / "HPS_v2_compressed.pt", weights_only=True)["state_dict"]
    del state["ln_final.weight"]
    torch.save(state, tmp_path / "HPS_v2_compressed.pt")
    for name in ("open_clip_config.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_paths["hpsv2"] / name).read_bytes())
    with pytest.raises(ConfigError, match="does not match the architecture"):
        load_reward("hpsv2", path=str(tmp_path))
