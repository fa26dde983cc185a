"""Training checkpoints: their folder layout, verification, pruning and tensor files.

The generic run-state parts (manifests, RNG capture, atomic files and folders) are :mod:`distar.runstate`'s;
the names the trainer uses are imported here.

A run folder holds ``checkpoint-<step>/`` folders, each with

- ``config.yaml``: the resolved :class:`~distar.train.config.TrainConfig`;
- ``generator.safetensors``: the trainable subset of the generator's ``state_dict`` (the full UNet when
  fully fine-tuned, the adapter weights with LoRA); ``generator_ema.safetensors``: the same keys, EMA;
- ``assistant.safetensors``: the assistant's trainable subset;
- with a LoRA generator, ``pytorch_lora_weights[_ema].safetensors``: the same adapter in diffusers'
  format, for ``pipe.load_lora_weights(folder[, weight_name=...])``;
- accelerate's state (``optimizer*.bin``, ``scheduler*.bin``, ``random_states_<rank>.pkl``);
- ``rng_state_<rank>.json``: python, numpy, torch and CUDA generator states of every process;
- ``trainer_state.json``: step, data position, EMA and bad-step counters;
- ``manifest.json``, written last: every other file's name, size and SHA-256.

Nothing incomplete is ever named ``checkpoint-<step>``: a folder is written as
``.checkpoint-<step>.tmp``, synced, given its manifest and only then renamed; a folder to delete is
first renamed to ``.trash-checkpoint-<step>``. Loading verifies the manifest, and ``latest`` is the
newest checkpoint that verifies.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from distar import runstate
from distar.config import ConfigError
from distar.errors import first_line
from distar.runstate import (  # noqa: F401  (re-exported: the trainer and tests call them as checkpoint helpers)
    MANIFEST_FILE,
    TRASH_PREFIX,
    remove_dir,
    replace_dir,
    rng_state,
    set_rng_state,
    write_manifest,
)

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
CONFIG_FILE = "config.yaml"
GENERATOR_FILE = "generator.safetensors"
GENERATOR_EMA_FILE = "generator_ema.safetensors"
ASSISTANT_FILE = "assistant.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
LOG_FILE = "log.jsonl"
BEST_DIR = "best"

#: What a run folder holds besides its checkpoints (see :mod:`distar.train.runfolder` for ``--overwrite``).
RUN_ENTRIES = (CONFIG_FILE, LOG_FILE, "samples", "tensorboard")

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
_LEFTOVER_NAME = re.compile(rf"^(\.({CHECKPOINT_PREFIX}\d+|best)\.tmp|{re.escape(TRASH_PREFIX)}.+)$")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used, named with the file at fault."""


def rng_state_file(rank: int) -> str:
    return f"rng_state_{rank}.json"


# ---------------------------------------------------------------------- listing and verifying


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-<step>`` folder under ``output_dir``, sorted by step (verified or not)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def verify_checkpoint(folder: Path) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint (naming the file at fault), or None."""
    return runstate.verify_manifest(folder, required=[TRAINER_STATE_FILE])


def resolve_checkpoint(resume: str, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from, verified.

    ``"latest"`` → the newest checkpoint in ``output_dir`` that verifies (each newer one skipped is
    logged with its reason), or None when there is no checkpoint at all. Anything else is a
    checkpoint folder that must verify. Raises :class:`CheckpointError` in one line otherwise.
    """
    if resume == "latest":
        found = list_checkpoints(output_dir)
        skipped = []
        for _, path in reversed(found):
            problem = verify_checkpoint(path)
            if problem is None:
                for reason in skipped:
                    logger.warning("skipped a checkpoint that does not verify: %s", reason)
                return path
            skipped.append(problem)
        if found:
            raise CheckpointError(
                f"none of the {len(found)} checkpoint(s) in {output_dir} verifies (newest: {skipped[0]}); "
                "pass --overwrite to start a new run there"
            )
        return None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"not a checkpoint folder: {resume}")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {resume} does not verify: {problem}")
    return path


# ---------------------------------------------------------------------- atomic folder changes


def prune_checkpoints(
    output_dir: str | Path, total_limit: int | None, *, on_trashed: Callable[[int], None] = lambda step: None
) -> list[Path]:
    """Delete the oldest checkpoints beyond ``total_limit`` (atomically each; ``on_trashed(step)`` runs
    between the rename and the deletion); returns the removed folders."""
    if total_limit is None:
        return []
    removed = list_checkpoints(output_dir)[:-total_limit]
    for step, path in removed:
        trash = runstate.to_trash(path)
        on_trashed(step)
        shutil.rmtree(trash)
    return [path for _, path in removed]


def is_leftover(name: str) -> bool:
    """Whether ``name`` is what an interrupted save or pruning leaves (``.checkpoint-<step>.tmp``, ``.trash-*``)."""
    return bool(_LEFTOVER_NAME.match(name))


def remove_leftovers(output_dir: str | Path) -> list[Path]:
    """Delete what an interrupted save or pruning left behind (``.checkpoint-<step>.tmp``, ``.trash-*``)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    leftovers = [p for p in root.iterdir() if is_leftover(p.name)]
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return leftovers


def best_checkpoint(output_dir: str | Path) -> Path:
    """The run folder's ``best/`` checkpoint (kept by the training monitor), verified."""
    path = Path(output_dir) / BEST_DIR
    if not path.is_dir():
        raise CheckpointError(f"{output_dir} has no {BEST_DIR}/ checkpoint (the monitor keeps one when monitor.select is set)")
    return resolve_checkpoint(str(path), output_dir)


def holds_run(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` already holds a run (a log, a config or a checkpoint)."""
    root = Path(output_dir)
    return any((root / name).exists() for name in RUN_ENTRIES) or bool(list_checkpoints(root))


def check_new_run(output_dir: str | Path, *, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds one, unless ``overwrite``."""
    if not overwrite and holds_run(output_dir):
        raise ConfigError(
            f"{output_dir} already holds a run: pass --resume latest to continue it or --overwrite to replace it"
        )


# ---------------------------------------------------------------------- file contents


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint; a missing or garbled file is a one-line :class:`CheckpointError`."""
    return runstate.read_json(path, error=CheckpointError)


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json``: a mapping whose ``step`` is a non-negative integer (one-line
    :class:`CheckpointError` otherwise; what else a reader needs, it checks)."""
    file = folder / TRAINER_STATE_FILE
    state = read_json(file)
    if not isinstance(state, dict) or type(state.get("step")) is not int or state["step"] < 0:
        raise CheckpointError(f"{file}: needs a non-negative integer 'step'")
    return state


def parameter_names(module: nn.Module, params: Iterable[nn.Parameter]) -> list[str]:
    """The ``state_dict`` names of ``params`` inside ``module``, in the order of ``params``."""
    names = {id(p): name for name, p in module.named_parameters()}
    params = list(params)
    missing = sum(id(p) not in names for p in params)
    if missing:
        raise ValueError(f"{missing} trainable parameter(s) are not parameters of {type(module).__name__}")
    return [names[id(p)] for p in params]


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite (one device synchronisation)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write named tensors as safetensors (detached, contiguous, on the CPU), atomically."""
    runstate.save_safetensors(Path(path), tensors)


def load_tensors(path: str | Path, expected: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of a safetensors file in the order of ``expected`` (name → the tensor each replaces):
    the names must match exactly, and each tensor must fit its counterpart (shape, floating point)."""
    from distar.backends.weights import state_mismatch

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(err)})") from None
    problem = state_mismatch(expected, tensors)
    if problem is not None:
        raise CheckpointError(f"{path}: does not match the model: {problem}")
    return [tensors[name] for name in expected]
