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


def _tiny_config(tmp_path, name, precision):
    from pathlib import Path

    from distar.config import load_config

    quick = ["logging.progress_bar=false", "sampling.every=0", "logging.report_to=none", "ema.decay=0",
             "loop.max_steps=2", "loop.assistant_steps=1", "objective.reward_scale=0", "rewards=[]"]
    configs = Path(__file__).resolve().parents[2] / "configs"
    return load_config(TrainConfig, configs / "tiny_sd.yaml",
                       [f"output_dir={tmp_path / name}", f"loop.mixed_precision={precision}", *quick])


def test_a_second_trainer_in_the_process_may_change_precision(tmp_path):
    first = build_trainer(_tiny_config(tmp_path, "a", "no"))
    first.train_step()
    second = build_trainer(_tiny_config(tmp_path, "b", "bf16"))  # accelerate alone refuses: "restart your runtime"
    assert second.accelerator.mixed_precision == "bf16"
    second.train_step()
    assert second.step == 1


def test_a_distributed_state_is_not_reset(tmp_path, monkeypatch):
    from accelerate import Accelerator
    from accelerate.state import PartialState

    from distar.train.build import release_accelerate_state

    Accelerator(mixed_precision="no", cpu=True)
    release_accelerate_state(_tiny_config(tmp_path, "same", "no"))  # nothing to change
    monkeypatch.setitem(PartialState._shared_state, "num_processes", 2)  # as under torchrun
    with pytest.raises(ConfigError, match=r"^loop.mixed_precision: this process already runs accelerate in no .*bf16$"):
        release_accelerate_state(_tiny_config(tmp_path, "b", "bf16"))
    monkeypatch.undo()  # before the fresh-accelerate fixture clears the state, not after (it would leave a stub)
