"""Finding reward-model files on disk or on the Hugging Face hub, failing with one-line errors.

A *source* is a local folder, a local file, or a hub repository id. Missing files raise
:class:`FileNotFoundError` whose message names the file and where to get it; the CLI prints it as is.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TypeVar

import torch

from distar.config import ConfigError
from distar.errors import first_line

T = TypeVar("T")


def find_file(source: str | Path, filename: str, *, local_files_only: bool = False) -> Path | None:
    """``filename`` inside a local folder or hub repo ``source``; None if it is not there.

    A local *file* ``source`` is returned as is. Network or cache failures for a hub id also give
    None, so callers can report the file as missing.
    """
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / filename
        return candidate if candidate.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(hf_hub_download(str(source), filename, local_files_only=local_files_only))
    except (OSError, ValueError, HFValidationError):
        # OSError covers huggingface_hub's EntryNotFound/LocalEntryNotFound/HTTP errors.
        return None


def require_file(
    source: str | Path, filename: str, *, what: str, hint: str, local_files_only: bool = False
) -> Path:
    """Like :func:`find_file`, but a missing file raises a one-line :class:`FileNotFoundError`.

    ``what`` names the model ("HPSv2.1"), ``hint`` says how to get the file
    ("download it from the hub repo xswu/HPSv2").
    """
    found = find_file(source, filename, local_files_only=local_files_only)
    if found is None:
        raise FileNotFoundError(f"{what} needs {filename} (looked in {source}): {hint} and pass path=...")
    return found


def read_json(source: str | Path, filename: str, *, local_files_only: bool = False) -> dict[str, Any] | None:
    """A JSON file from ``source`` as a dict, or None when absent."""
    found = find_file(source, filename, local_files_only=local_files_only)
    return json.loads(found.read_text()) if found is not None else None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (missing weights are checked by the caller)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def from_pretrained(
    cls: type[T],
    source: str | Path,
    *,
    what: str,
    local_files_only: bool = False,
    random_weights: bool = False,
    **kwargs: Any,
) -> T:
    """``cls.from_pretrained(source)`` with one-line errors when the model cannot be found or misses weights;
    with ``random_weights`` (a model class) its architecture from the config alone, weights random."""
    from transformers import PreTrainedModel

    loads_weights = isinstance(cls, type) and issubclass(cls, PreTrainedModel)
    try:
        if random_weights and loads_weights:
            from distar.io import random_model

            return random_model(cls, str(source))
        with quiet_transformers():
            loaded = cls.from_pretrained(  # type: ignore[attr-defined]
                str(source), local_files_only=local_files_only,
                **({"output_loading_info": True} if loads_weights else {}), **kwargs,
            )
    except OSError:
        raise FileNotFoundError(
            f"{what}: cannot load '{source}' (not a local folder, not in the hub cache, hub unreachable): "
            f"download it with `huggingface-cli download {source}` or pass path=FOLDER"
        ) from None
    if not loads_weights:
        return loaded
    model, info = loaded
    if info["missing_keys"] or info.get("mismatched_keys"):
        bad = sorted(info["missing_keys"]) or [str(k) for k in info["mismatched_keys"]]
        raise ConfigError(f"{what}: '{source}' lacks weights for this architecture (e.g. {bad[0]})")
    return model


def from_state_dict(cls: type[T], config: Any, state_dict: dict[str, torch.Tensor], *, what: str, **kwargs: Any) -> T:
    """A transformers model ``cls(config)`` holding exactly ``state_dict`` (no key missing or left over)."""
    with quiet_transformers():
        model, info = cls.from_pretrained(  # type: ignore[attr-defined]
            None, config=config, state_dict=state_dict, output_loading_info=True, **kwargs
        )
    if info["missing_keys"] or info["unexpected_keys"]:
        detail = f"missing {sorted(info['missing_keys'])[:3]}" if info["missing_keys"] else (
            f"unexpected {sorted(info['unexpected_keys'])[:3]}"
        )
        raise ConfigError(f"{what}: checkpoint does not match the architecture ({detail})")
    return model


def load_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pt``/``.pth``/``.safetensors`` file, unwrapping a top-level ``state_dict`` key.

    Pickled checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain
    containers are accepted, never arbitrary objects.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors have many types; the message is what matters
        raise ConfigError(f"{path}: not a plain tensor checkpoint ({first_line(err)})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConfigError(f"{path}: expected a state dict of tensors")
    return data
