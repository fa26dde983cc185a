"""Checkpoint folder layout, manifests, RNG state and the file-level helpers the trainer uses.

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

import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from distar.config import ConfigError
from distar.errors import first_line

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
CONFIG_FILE = "config.yaml"
GENERATOR_FILE = "generator.safetensors"
GENERATOR_EMA_FILE = "generator_ema.safetensors"
ASSISTANT_FILE = "assistant.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
LOG_FILE = "log.jsonl"
TRASH_PREFIX = ".trash-"
BEST_DIR = "best"

#: What a run folder holds besides its checkpoints (see :mod:`distar.train.runfolder` for ``--overwrite``).
RUN_ENTRIES = (CONFIG_FILE, LOG_FILE, "samples", "tensorboard")

#: Test hook: ``DISTAR_KILL_AT=<point>:<step>[:<signal>]`` signals the process at that point (see :func:`kill_point`).
KILL_ENV = "DISTAR_KILL_AT"

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
_LEFTOVER_NAME = re.compile(rf"^(\.({CHECKPOINT_PREFIX}\d+|best)\.tmp|{re.escape(TRASH_PREFIX)}.+)$")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used, named with the file at fault."""


def kill_point(point: str, step: int) -> None:
    """Send this process SIGKILL when ``$DISTAR_KILL_AT`` is ``<point>:<step>``, or the signal named by
    ``<point>:<step>:<signal>`` (e.g. ``step:3:SIGTERM``; several entries are separated by commas): lets
    tests stop a real run inside a checkpoint write or a pruning, deterministically. Does nothing otherwise."""
    for entry in os.environ.get(KILL_ENV, "").split(","):
        parts = entry.split(":")
        if parts[:2] == [point, str(step)]:
            os.kill(os.getpid(), signal.Signals[parts[2]] if len(parts) > 2 else signal.SIGKILL)


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


def _sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> None:
    """Sync every file of ``folder`` and record its size and SHA-256 in ``manifest.json`` (written last)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    _fsync(tmp)
    tmp.rename(folder / MANIFEST_FILE)
    _fsync(folder)


#: Folders that verified in this process, with the (name, size, mtime) of their files then: a second
#: verification of an unchanged folder (the command line checks before building models, the trainer
#: again when it loads) does not hash gigabytes twice.
_verified: dict[Path, tuple] = {}


def _signature(folder: Path) -> tuple:
    files = (p for p in folder.rglob("*") if p.is_file())
    return tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def verify_checkpoint(folder: Path) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint (naming the file at fault), or None."""
    key = folder.resolve()
    if key in _verified and _verified[key] == _signature(folder):
        return None
    problem = _check_manifest(folder)
    if problem is None:
        _verified[key] = _signature(folder)
    return problem


def _check_manifest(folder: Path) -> str | None:
    manifest = folder / MANIFEST_FILE
    try:
        files = json.loads(manifest.read_text())["files"]
        entries = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except FileNotFoundError:
        return f"{manifest}: missing (incomplete, or not written by this version of distar)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{manifest}: unreadable ({type(err).__name__})"
    if TRAINER_STATE_FILE not in files:
        return f"{manifest}: lists no {TRAINER_STATE_FILE}"
    for name, size, sha in entries:
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != size:
            return f"{path}: {path.stat().st_size} bytes, the manifest says {size}"
        if _sha256(path) != sha:
            return f"{path}: SHA-256 does not match the manifest (corrupted)"
    return None


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


def _to_trash(path: Path) -> Path:
    """Rename ``path`` to its trash name (one atomic rename) and return the new path."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    path.rename(trash)
    return trash


def remove_dir(path: Path) -> None:
    """Delete a folder so that no half-deleted folder keeps its name: rename first, then delete."""
    shutil.rmtree(_to_trash(path))


def prune_checkpoints(
    output_dir: str | Path, total_limit: int | None, *, on_trashed: Callable[[int], None] = lambda step: None
) -> list[Path]:
    """Delete the oldest checkpoints beyond ``total_limit`` (atomically each; ``on_trashed(step)`` runs
    between the rename and the deletion); returns the removed folders."""
    if total_limit is None:
        return []
    removed = list_checkpoints(output_dir)[:-total_limit]
    for step, path in removed:
        trash = _to_trash(path)
        on_trashed(step)
        shutil.rmtree(trash)
    return [path for _, path in removed]


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a completely written folder ``tmp`` to ``final``, replacing an older ``final``."""
    if final.exists():
        trash = _to_trash(final)
        tmp.rename(final)
        shutil.rmtree(trash)
    else:
        tmp.rename(final)
    _fsync(final.parent)


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
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: not JSON, 5,000 digits
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__})") from None


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json``: a mapping whose ``step`` is a non-negative integer (one-line
    :class:`CheckpointError` otherwise; what else a reader needs, it checks)."""
    file = folder / TRAINER_STATE_FILE
    state = read_json(file)
    if not isinstance(state, dict) or type(state.get("step")) is not int or state["step"] < 0:
        raise CheckpointError(f"{file}: needs a non-negative integer 'step'")
    return state


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


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite (one device synchronisation)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write named tensors as safetensors (detached, contiguous, on the CPU)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


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
