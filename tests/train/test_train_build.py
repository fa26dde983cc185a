"""Prompt loading for `distar train` and the builder's config checks."""

from __future__ import annotations

import pytest

from distar.config import ConfigError, from_dict
from distar.train.build import build_trainer, load_prompts
from distar.train.config import DataConfig, TrainConfig


def test_prompts_from_a_file_column(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('id,caption\n1,"a cat, sitting"\n2,a dog\n')
    assert list(load_prompts(DataConfig(source=str(path), column="caption"))) == ["a cat, sitting", "a dog"]


def test_inline_prompts_and_empty_sources(tmp_path):
    assert load_prompts(DataConfig(prompts=["x", "y"])) == ["x", "y"]
    with pytest.raises(ConfigError, match="data.prompts has no prompts"):
        load_prompts(DataConfig())
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="no prompts in data.source"):
        load_prompts(DataConfig(source=str(empty)))
    with pytest.raises(FileNotFoundError):
        load_prompts(DataConfig(source=str(tmp_path / "missing.txt")))


def test_builder_needs_a_model_and_a_reward_for_alpha():
    with pytest.raises(ConfigError, match="needs a `model` section"):
        build_trainer(TrainConfig())
    config = from_dict(TrainConfig, {"model": {"pretrained": "tiny:sd"}, "objective": {"preset": "di_star"}})
    with pytest.raises(ConfigError, match="reward_scale is 100 but `rewards` is empty"):
        build_trainer(config)
