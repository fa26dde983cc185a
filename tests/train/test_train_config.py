"""TrainConfig: YAML loading, overrides, one-line errors naming the key, the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from distar.config import ConfigError, load_config, save_config, to_dict
from distar.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(p.name for p in CONFIGS.glob("*.yaml"))  # every shipped config, without building models


def test_defaults_and_overrides():
    cfg = load_config(
        TrainConfig,
        None,
        ["optim.generator.lr=2e-6", "loop.assistant_steps=5", "objective.preset=di_star", "data.prompts=[a, b]"],
    )
    assert cfg.optim.generator.lr == 2e-6
    assert cfg.optim.assistant.lr == 5e-7  # the two optimisers are configured separately
    assert cfg.loop.assistant_steps == 5
    assert cfg.objective.reward_scale == 100.0  # from the preset
    assert cfg.data.prompts == ["a", "b"]
    assert cfg.model is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.generator.lrr=1", "unknown key 'optim.generator.lrr' (did you mean 'lr'?)"),
        ("optim.generator.lr=0", "optim.generator: lr must be > 0"),
        ("loop.max_steps=ten", "loop.max_steps: expected an integer, got 'ten'"),
        ("loop.mixed_precision=fp8", "loop.mixed_precision: 'fp8' is not one of 'no', 'fp16', 'bf16'"),
        ("data.batch_size=0", "data: batch_size must be in [1, 65536]"),
        ("data.batch_size=1000000000000", "data: batch_size must be in [1, 65536]"),
        ("loop.max_steps=1e40", "loop.max_steps: expected an integer"),
        ("loop.assistant_steps=1000000000", "loop: assistant_steps must be in [1, 1000]"),
        ("seed=-1", "TrainConfig: seed must be in"),
        ("seed=4294967296", "TrainConfig: seed must be in"),
        ("optim.generator.lr=.nan", "optim.generator.lr: expected a finite number, got nan"),
        ("objective.reward_scale=.inf", "objective.reward_scale: expected a finite number, got inf"),
        ("objective.preset={a: 1}", "objective.preset: unknown preset {'a': 1}"),
        ("loop.max_steps=[1", "override 'loop.max_steps': invalid YAML at line 1, column 3"),
        ("loop..max_steps=1", "override 'loop..max_steps=1': empty key"),
        ("ema.decay=1.0", "ema: decay must be in [0, 1)"),
        ("optim.assistant.betas=[0.9]", "optim.assistant: betas must be two numbers in [0, 1)"),
        ("checkpointing.total_limit=0", "checkpointing: total_limit must be >= 1 (or null)"),
        ("optim.generator.lr_schedule=exponential", "optim.generator.lr_schedule: 'exponential' is not one of"),
        ("sampling.batch_size=0", "sampling: batch_size must be in [1, 65536]"),
        ("sampling.every=5", None),
        ("sampling.seeds=[]", None),
    ],
)
def test_errors_name_the_key(override, message):
    if message is None:  # valid alone
        load_config(TrainConfig, None, [override])
        return
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, [override])
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_sampling_needs_seeds():
    with pytest.raises(ConfigError, match="sampling: seeds must not be empty"):
        load_config(TrainConfig, None, ["sampling.every=5", "sampling.seeds=[]"])


def test_unknown_top_level_section(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optimizer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'optimizer' \\(did you mean 'optim'\\?\\)"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load_and_round_trip(name, tmp_path):
    cfg = load_config(TrainConfig, CONFIGS / name)
    assert cfg.model is not None and cfg.rewards and cfg.objective.preset == "di_star"
    save_config(cfg, tmp_path / "config.yaml")
    assert to_dict(load_config(TrainConfig, tmp_path / "config.yaml")) == to_dict(cfg)


def test_paper_recipe():
    """sdxl_dmd2_pickscore.yaml is the paper's setting (§8): PickScore α = 100, inner CFG ω = 7.5, pseudo-Huber."""
    cfg = load_config(TrainConfig, CONFIGS / "sdxl_dmd2_pickscore.yaml")
    assert cfg.model.family == "sdxl"
    assert [(r.name, r.weight) for r in cfg.rewards] == [("pickscore", 1.0)]
    objective = cfg.objective
    assert (objective.divergence, objective.reward_scale, objective.cfg_mode, objective.guidance_scale) == (
        "pseudo_huber",
        100.0,
        "inner",
        7.5,
    )


#: (override with a diffusers/TRL key, the distar key(s) or flag the error names, a value that key takes)
FOREIGN = [
    ("learning_rate", ["optim.generator.lr", "optim.assistant.lr"], "1e-5"),
    ("optim.generator.learning_rate", ["optim.generator.lr"], "1e-5"),
    ("optim.assistant.learning_rate", ["optim.assistant.lr"], "1e-5"),
    ("max_train_steps", ["loop.max_steps"], "10"),
    ("loop.max_train_steps", ["loop.max_steps"], "10"),
    ("train_batch_size", ["data.batch_size"], "4"),
    ("data.train_batch_size", ["data.batch_size"], "4"),
    ("checkpointing_steps", ["checkpointing.every"], "50"),
    ("checkpointing.checkpointing_steps", ["checkpointing.every"], "50"),
    ("resume_from_checkpoint", ["--resume"], "latest"),
    ("report_to", ["logging.report_to"], "tensorboard"),
]


@pytest.mark.parametrize("key, targets, value", FOREIGN, ids=[f[0] for f in FOREIGN])
def test_diffusers_and_trl_names_point_to_distar_keys(key, targets, value):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, overrides=[f"{key}={value}"])
    message = str(err.value)
    assert message.startswith(f"unknown key '{key}' (distar's name for it: ") and "\n" not in message
    for target in targets:
        assert (target if target.startswith("--") else f"'{target}'") in message
        if not target.startswith("--"):  # the named key exists and takes the value
            assert load_config(TrainConfig, overrides=[f"{target}={value}"])


def test_foreign_name_on_the_command_line(capsys):
    from distar.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny_sd.yaml"
    assert main(["train", "--config", str(config), "--dry-run", "loop.max_train_steps=10"]) == 2
    assert capsys.readouterr().err.strip() == (
        "distar train: error: unknown key 'loop.max_train_steps' (distar's name for it: 'loop.max_steps')"
    )


def test_accelerate_spelling_of_no_mixed_precision():
    """``loop.mixed_precision=no`` (accelerate's spelling, which YAML reads as false) means 'no'."""
    assert load_config(TrainConfig, overrides=["loop.mixed_precision=no"]).loop.mixed_precision == "no"
    with pytest.raises(ConfigError, match="loop.mixed_precision: True is not one of 'no', 'fp16', 'bf16'"):
        load_config(TrainConfig, overrides=["loop.mixed_precision=yes"])
