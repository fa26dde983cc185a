"""Build a :class:`~distar.train.loop.Trainer` from a :class:`TrainConfig` (what ``distar train`` runs)."""

from __future__ import annotations

from typing import Sequence

import torch
from accelerate import Accelerator

from distar.config import ConfigError
from distar.io import read_some
from distar.train.config import DataConfig, TrainConfig
from distar.train.data import open_prompts
from distar.train.callbacks import Callback
from distar.train.loop import Trainer
from distar.train.setup import make_accelerator


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


def release_accelerate_state(config: TrainConfig) -> None:
    """Let a process that already built an Accelerator (a notebook's earlier trainer) build one with
    ``config``'s ``loop.mixed_precision`` or device: accelerate keeps one precision and device per
    process, so a single-process state that differs is reset. Under a distributed launch it cannot be,
    and a difference stops with a one-line :class:`ConfigError`."""
    from accelerate.state import AcceleratorState, PartialState

    if not AcceleratorState._shared_state:
        return
    state = AcceleratorState()
    precision = config.loop.mixed_precision
    cpu = config.loop.cpu or not torch.cuda.is_available()
    if (precision is None or str(state.mixed_precision) == precision) and (state.device.type == "cpu") == cpu:
        return
    if PartialState().num_processes > 1:
        raise ConfigError(
            f"loop.mixed_precision: this process already runs accelerate in {state.mixed_precision} on "
            f"{state.device}, which a distributed launch cannot change; start a new launch for {precision}"
        )
    AcceleratorState._reset_state(reset_partial_state=True)


def build_trainer(
    config: TrainConfig,
    accelerator: Accelerator | None = None,
    *,
    prompts: Sequence[str] | None = None,
    offload_device: torch.device | str = "cpu",
    callbacks: Sequence[Callback] = (),
) -> Trainer:
    """Backend (``config.model``), reward (``config.rewards``) and prompts (``config.data``, unless
    already read into ``prompts``) on the accelerator's device, wrapped in a Trainer. The reward is
    skipped when no reward terms are set. Offloaded text encoders wait on ``offload_device``;
    ``callbacks`` are the Trainer's (:class:`~distar.train.callbacks.Callback`).
    Without ``accelerator``, one is made for ``config`` (:func:`release_accelerate_state` first, so a
    notebook may build trainers of different precisions one after another; an earlier trainer then
    shares the newer state and should not be trained further)."""
    if config.model is None:
        raise ConfigError("model: the training config needs a `model` section")
    if config.objective.reward_scale != 0.0 and not config.rewards:
        raise ConfigError(f"objective.reward_scale is {config.objective.reward_scale:g} but `rewards` is empty")
    from distar.backends import build_backend
    from distar.rewards import WeightedReward, build_reward
    from distar.rewards.plugins import probe_reward

    prompts = load_prompts(config.data) if prompts is None else prompts
    if accelerator is None:
        release_accelerate_state(config)
        accelerator = make_accelerator(config)
    with accelerator.main_process_first():  # downloads and tiny-model builds happen once
        # The reward first: a plugin that breaks the reward contract is refused before the generator loads.
        reward = None
        if config.rewards:
            reward = build_reward(config.rewards, device=accelerator.device, dtype=config.model.dtype)
            terms = reward.rewards if isinstance(reward, WeightedReward) else [reward]
            for spec, term in zip(config.rewards, terms):
                if spec.is_plugin:
                    differentiable = config.objective.reward_scale != 0.0
                    probe_reward(term, prompts[0], name=spec.name, differentiable=differentiable)
        torch.manual_seed(config.seed)  # LoRA adapters are drawn from the global RNG: same on every process and run
        backend = build_backend(config.model, device=accelerator.device, offload_device=offload_device)
    return Trainer(config, backend, reward, prompts, accelerator=accelerator, callbacks=callbacks)
