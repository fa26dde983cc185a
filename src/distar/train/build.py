"""Build a :class:`~distar.train.loop.Trainer` from a :class:`TrainConfig` (what ``distar train`` runs)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from accelerate import Accelerator

from distar.config import ConfigError
from distar.io import read_some
from distar.train.config import DataConfig, TrainConfig
from distar.train.data import open_prompts
from distar.train.loop import Trainer, make_accelerator


def load_prompts(data: DataConfig) -> Sequence[str]:
    """The training prompts: ``data.source`` as a lazy table (:func:`~distar.train.data.open_prompts`)
    if set, else ``data.prompts``."""
    if data.source is not None:
        source = data.source

        def read() -> Sequence[str]:
            return open_prompts(source, data.column, split=data.split, name=data.name, streaming=data.streaming)

        return read_some(read, f"data.source '{source}'")
    if not data.prompts:
        raise ConfigError("data.prompts has no prompts (set data.source to a prompt file or give data.prompts)")
    return list(data.prompts)


def build_trainer(
    config: TrainConfig,
    accelerator: Accelerator | None = None,
    *,
    prompts: Sequence[str] | None = None,
    offload_device: torch.device | str = "cpu",
    trainer_class: type[Trainer] = Trainer,
    **trainer_options: Any,
) -> Trainer:
    """Backend (``config.model``), reward (``config.rewards``) and prompts (``config.data``, unless
    already read into ``prompts``) on the accelerator's device, wrapped in a Trainer. The reward is
    skipped when no reward terms are set. Offloaded text encoders wait on ``offload_device``;
    ``trainer_class`` (a Trainer subclass) is built with ``trainer_options`` added to its arguments."""
    if config.model is None:
        raise ConfigError("model: the training config needs a `model` section")
    if config.objective.reward_scale != 0.0 and not config.rewards:
        raise ConfigError(f"objective.reward_scale is {config.objective.reward_scale:g} but `rewards` is empty")
    from distar.backends import build_backend
    from distar.rewards import build_reward

    prompts = load_prompts(config.data) if prompts is None else prompts
    accelerator = accelerator or make_accelerator(config)
    with accelerator.main_process_first():  # downloads and tiny-model builds happen once
        torch.manual_seed(config.seed)  # LoRA adapters are drawn from the global RNG: same on every process and run
        backend = build_backend(config.model, device=accelerator.device, offload_device=offload_device)
        reward = None
        if config.rewards:
            reward = build_reward(config.rewards, device=accelerator.device, dtype=config.model.dtype)
    return trainer_class(config, backend, reward, prompts, accelerator=accelerator, **trainer_options)
