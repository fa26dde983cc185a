"""Typed YAML configs with dotted overrides and one-line errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from distar.config import ConfigError, field, from_dict, load_config, save_config
from distar.objectives import ObjectiveConfig


@dataclass
class Optim:
    lr: float = field(1e-4, help="learning rate")
    betas: list[float] = field([0.9, 0.999], help="Adam betas")


@dataclass
class Run:
    name: str = field("run", help="run name")
    steps: int = field(10, help="steps")
    mode: Literal["a", "b"] = field("a", help="mode")
    tag: str | None = field(None, help="optional tag")
    optim: Optim = field(Optim(), help="optimiser")
    objective: ObjectiveConfig = field(ObjectiveConfig(), help="objective")


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 0.01\nobjective:\n  preset: di_star\n  reward_scale: 10\n")
    cfg = load_config(Run, path, ["optim.betas=[0.5, 0.9]", "mode=b", "tag=x", "objective.guidance_scale=2"])
    assert cfg.steps == 5 and cfg.optim.lr == 0.01 and cfg.optim.betas == [0.5, 0.9] and cfg.mode == "b"
    assert cfg.objective.divergence == "pseudo_huber" and cfg.objective.reward_scale == 10.0
    assert cfg.objective.guidance_scale == 2.0
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Run, tmp_path / "resolved.yaml") == cfg
    assert Run().optim is not Run().optim  # mutable defaults are per instance


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stpes": 3}, "unknown key 'stpes' (did you mean 'steps'?)"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a number"),
        ({"mode": "c"}, "mode: 'c' is not one of 'a', 'b'"),
        ({"steps": 1.5}, "steps: expected an integer"),
        ({"objective": {"preset": "nope"}}, "objective.preset: unknown preset"),
        ({"objective": {"t_min": 0.9, "t_max": 0.1}}, "t_min/t_max"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Run, data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Run, None, ["steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "missing.yaml")


@dataclass
class Tuned:
    optim: Optim = field(Optim(lr=0.5, betas=[0.1, 0.2]), help="optimiser with its own defaults")
    objective: ObjectiveConfig = field(ObjectiveConfig(preset="dmd2", reward_scale=7.0), help="objective")


def test_a_section_override_keeps_the_fields_default_instance_for_the_other_keys():
    cfg = from_dict(Tuned, {"optim": {"lr": 0.25}, "objective": {"guidance_scale": 2.0}})
    assert cfg.optim == Optim(lr=0.25, betas=[0.1, 0.2])
    assert cfg.objective.reward_scale == 7.0 and cfg.objective.guidance_scale == 2.0
    assert cfg.objective.divergence == ObjectiveConfig(preset="dmd2").divergence
    renamed = from_dict(Tuned, {"objective": {"preset": "di_star"}})  # a preset starts from its own values
    assert renamed.objective == from_dict(ObjectiveConfig, {"preset": "di_star"})
    assert from_dict(Tuned, {}) == Tuned()
