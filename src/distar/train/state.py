"""A Trainer's checkpoint state: what ``checkpoint-<step>/`` holds of a run, written and restored.

The folder layout, manifests and file helpers are :mod:`distar.train.checkpoint`'s; this module
gathers the trainer's part: trainable weights (safetensors), accelerate's optimiser and scheduler
state, the EMA, the data position, the bad-step counters and every process's RNG state.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distar.backends.lora import save_checkpoint_lora
from distar.config import save_config
from distar.errors import RunError, first_line
from distar.train import checkpoint as ckpt
from distar.train import distributed

logger = logging.getLogger(__name__)


def last_checkpoint(output_dir: Path) -> str:
    """Which checkpoint a stopped run leaves to resume from, for its error message."""
    found = ckpt.list_checkpoints(output_dir)
    return f"last checkpoint: {found[-1][1]}" if found else "no checkpoint was written"


def _trainable_state(trainer: Any, module: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """The trainable subset of the unwrapped module's state_dict (gathered under FSDP)."""
    state = trainer.accelerator.get_state_dict(module)
    return distributed.full_tensors({name: state[name] for name in names}) if state else {}


def save_checkpoint(trainer: Any, folder: str | None = None) -> Path:
    """Write ``checkpoint-<step>/`` (or the run folder's ``folder``, never pruned) atomically and prune old
    ones (see :mod:`distar.train.checkpoint`); then tell the callbacks.

    Non-finite weights are never written, and a failed write (a full disk) leaves the earlier
    checkpoints as they were; both raise :class:`~distar.errors.RunError`.
    """
    acc, config, output_dir, step = trainer.accelerator, trainer.config, trainer.output_dir, trainer.step
    final = output_dir / (folder or f"{ckpt.CHECKPOINT_PREFIX}{step}")
    tmp = output_dir / f".{final.name}.tmp"
    generator = _trainable_state(trainer, trainer.backend.generator, trainer.generator_names)
    assistant = _trainable_state(trainer, trainer.backend.assistant, trainer.assistant_names)
    tensors = {ckpt.GENERATOR_FILE: generator, ckpt.ASSISTANT_FILE: assistant}
    state = {"step": step, "world_size": acc.num_processes, "data": trainer.data.state_dict(), **trainer.guard.state_dict()}
    if trainer.ema is not None:
        ema_state = trainer.ema.state_dict()
        shadow = dict(zip(trainer.generator_names, ema_state.pop("shadow_params")))
        tensors[ckpt.GENERATOR_EMA_FILE] = distributed.full_tensors(shadow)
        state["ema"] = ema_state
    if not ckpt.all_finite(t for group in tensors.values() for t in group.values()):
        bad = [name for name, group in tensors.items() if not ckpt.all_finite(group.values())]
        raise RunError(
            f"step {step}: non-finite weights in {', '.join(bad)}: {final.name} not written; {last_checkpoint(output_dir)}"
        )
    try:
        if trainer.nodes.writer:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        (tmp / ckpt.rng_state_file(acc.process_index)).write_text(json.dumps(ckpt.rng_state()))
        if trainer.nodes.writer:
            for name, group in tensors.items():
                ckpt.save_tensors(group, tmp / name)
                trainer.callbacks.on_point(trainer, "checkpoint-write", step)
            save_checkpoint_lora(trainer.backend.generator, tmp, generator, tensors.get(ckpt.GENERATOR_EMA_FILE))
            save_config(config, tmp / ckpt.CONFIG_FILE)
            (tmp / ckpt.TRAINER_STATE_FILE).write_text(json.dumps(state, indent=1))
        acc.wait_for_everyone()
        if trainer.nodes.writer:
            ckpt.write_manifest(tmp)
            ckpt.replace_dir(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"could not write {final} ({err.strerror or err}); {last_checkpoint(output_dir)}") from None
    if trainer.nodes.writer and folder is None:
        ckpt.prune_checkpoints(
            output_dir,
            config.checkpointing.total_limit,
            on_trashed=lambda pruned: trainer.callbacks.on_point(trainer, "prune", pruned),
        )
    acc.wait_for_everyone()
    trainer.callbacks.on_checkpoint(trainer, final)
    return final


def trainer_state(path: Path, max_steps: int) -> dict:
    """``trainer_state.json`` of checkpoint ``path``, with its fields checked."""
    file = path / ckpt.TRAINER_STATE_FILE
    state = ckpt.read_trainer_state(path)
    if type(state.get("world_size")) is not int or state["world_size"] < 1:
        raise ckpt.CheckpointError(f"{file}: needs a positive integer 'world_size'")
    if not isinstance(state.get("data"), dict) or type(state["data"].get("position")) is not int:
        raise ckpt.CheckpointError(f"{file}: needs 'data': {{'position': <int>}}")
    if state["step"] > max_steps:
        raise ckpt.CheckpointError(
            f"{file}: step {state['step']} is past loop.max_steps = {max_steps} (raise loop.max_steps to go on)"
        )
    return state


def load_checkpoint(trainer: Any, path: str | Path) -> None:
    """Restore weights, optimisers, schedulers, EMA, data position, counters and RNG from ``path``.

    The folder should have passed :func:`~distar.train.checkpoint.verify_checkpoint`; anything
    in it that cannot be used raises a one-line :class:`~distar.train.checkpoint.CheckpointError`.
    """
    acc, path = trainer.accelerator, Path(path)
    state = trainer_state(path, trainer.config.loop.max_steps)
    if state["world_size"] != acc.num_processes:
        logger.warning(
            "checkpoint was written by %d processes, resuming with %d: prompt order changes",
            state["world_size"],
            acc.num_processes,
        )
    try:
        acc.load_state(str(path))
    except (pickle.UnpicklingError, RuntimeError, KeyError, ValueError, OSError, EOFError) as err:
        reason = first_line(err)[:200]
        raise ckpt.CheckpointError(f"{path}: optimizer/scheduler state cannot be loaded ({reason})") from None
    for params, names, file in (
        (trainer.generator_params, trainer.generator_names, ckpt.GENERATOR_FILE),
        (trainer.assistant_params, trainer.assistant_names, ckpt.ASSISTANT_FILE),
    ):
        with torch.no_grad():
            for p, value in zip(params, ckpt.load_tensors(path / file, dict(zip(names, params)))):
                p.copy_(distributed.shard_like(value, p))
    if trainer.ema is not None:
        if "ema" not in state:
            raise ckpt.CheckpointError(f"ema.decay is set but {path} has no EMA weights")
        expected = dict(zip(trainer.generator_names, trainer.generator_params))
        values = ckpt.load_tensors(path / ckpt.GENERATOR_EMA_FILE, expected)
        shadow = [distributed.shard_like(v, p) for v, p in zip(values, trainer.generator_params)]
        trainer.ema.load_state_dict({**state["ema"], "shadow_params": shadow})
        trainer.ema.to(acc.device)
    trainer.data.load_state_dict(state["data"])
    trainer.step = state["step"]
    trainer.guard.load_state_dict(state)
    rng_file = path / ckpt.rng_state_file(acc.process_index)
    if rng_file.is_file():
        try:
            ckpt.set_rng_state(ckpt.read_json(rng_file))
        except (KeyError, ValueError, TypeError, RuntimeError):
            raise ckpt.CheckpointError(f"{rng_file}: not an RNG state") from None
    else:
        logger.warning("%s missing: random draws will differ from an uninterrupted run", rng_file.name)
    logger.info("resumed from %s at step %d", path, trainer.step)
    if trainer.step == trainer.config.loop.max_steps:
        logger.info("%s is at loop.max_steps = %d: nothing left to train", path.name, trainer.step)
