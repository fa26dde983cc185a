"""Checkpoint folder layout, RNG state and the file-level helpers the trainer uses.

A run folder holds ``checkpoint-<step>/`` folders, each with

- ``config.yaml``: the resolved :class:`~distar.train.config.TrainConfig`;
- ``generator.safetensors``: the trainable subset of the generator's ``state_dict`` (the full UNet when
  fully fine-tuned, the adapter weights with LoRA); ``generator_ema.safetensors``: the same keys, EMA;
- ``assistant.safetensors``: the assistant's trainable subset;
- with a LoRA generator, ``pytorch_lora_weights[_ema].safetensors``: the same adapter in diffusers'
  format, for ``pipe.load_lora_weights(folder[, weight_name=...])``;
- accelerate's state (``optimizer*.bin``, ``scheduler*.bin``, ``random_states_<rank>.pkl``);
- ``rng_state_<rank>.json``: python, numpy, torch and CUDA generator states of every process;
- ``trainer_state.json``: step, data position and EMA counters.

Folders are written under a temporary name and renamed when complete, so a crash mid-save never
leaves a half-written ``checkpoint-<step>``; ``latest`` resolves to the highest complete step.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINT_PREFIX = "checkpoint-"
CONFIG_FILE = "config.yaml"
GENERATOR_FILE = "generator.safetensors"
GENERATOR_EMA_FILE = "generator_ema.safetensors"
ASSISTANT_FILE = "assistant.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def rng_state_file(rank: int) -> str:
    return f"rng_state_{rank}.json"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete ``checkpoint-<step>`` folders under ``output_dir``, sorted by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and (path / TRAINER_STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_checkpoint(resume: str, output_dir: str | Path) -> Path | None:
    """``"latest"`` → the highest-step checkpoint in ``output_dir`` (None if there is none yet);
    anything else is a checkpoint folder path, which must exist."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / TRAINER_STATE_FILE).is_file():
        raise FileNotFoundError(f"not a checkpoint folder (no {TRAINER_STATE_FILE}): {resume}")
    return path


def prune_checkpoints(output_dir: str | Path, total_limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond ``total_limit``; returns the removed folders."""
    if total_limit is None:
        return []
    removed = [path for _, path in list_checkpoints(output_dir)[:-total_limit]]
    for path in removed:
        shutil.rmtree(path)
    return removed


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a completely written folder ``tmp`` to ``final``, replacing an older ``final``."""
    if final.exists():
        stale = final.with_name(f".{final.name}.old")
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
        tmp.rename(final)
        shutil.rmtree(stale)
    else:
        tmp.rename(final)


def rng_state() -> dict[str, Any]:
    """Every global generator's state as JSON-serialisable lists."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def parameter_names(module: nn.Module, params: Iterable[nn.Parameter]) -> list[str]:
    """The ``state_dict`` names of ``params`` inside ``module``, in the order of ``params``."""
    names = {id(p): name for name, p in module.named_parameters()}
    params = list(params)
    missing = sum(id(p) not in names for p in params)
    if missing:
        raise ValueError(f"{missing} trainable parameter(s) are not parameters of {type(module).__name__}")
    return [names[id(p)] for p in params]


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write named tensors as safetensors (detached, contiguous, on the CPU)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: str | Path, names: list[str]) -> list[torch.Tensor]:
    """Tensors of a safetensors file in the order of ``names``; the key sets must match exactly."""
    tensors = load_file(str(path))
    if set(tensors) != set(names):
        extra, missing = sorted(set(tensors) - set(names)), sorted(set(names) - set(tensors))
        raise ValueError(f"{path}: keys do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    return [tensors[name] for name in names]
