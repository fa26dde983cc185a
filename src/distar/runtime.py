"""The process distar runs in: the facts a reported timing or figure depends on, and its devices."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from distar.config import ConfigError
from distar.errors import UserError


#: Seeds of CPU ``torch.Generator`` noise: ``manual_seed`` takes any of these.
MAX_SEED = 2**63 - 1

#: The largest image side accepted for sampling (beyond it one image no longer fits a GPU).
MAX_IMAGE_SIDE = 8192


def check_seed(seed: int, what: str) -> int:
    """``seed`` if it is in [0, :data:`MAX_SEED`]."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what}: {seed} is not a seed (0 to 2**63 - 1)")
    return seed


def check_image_side(side: int | None, what: str) -> int | None:
    """``side`` if it is None or a positive multiple of 8 up to :data:`MAX_IMAGE_SIDE`."""
    if side is not None and not (0 < side <= MAX_IMAGE_SIDE and side % 8 == 0):
        raise ConfigError(f"{what}: {side} is not an image side (a multiple of 8 from 8 to {MAX_IMAGE_SIDE})")
    return side


def torch_device(name: str | None, what: str = "--device") -> torch.device:
    """The device called ``name`` (default: cuda if available, else cpu); one line if it is not a
    device name or not on this machine."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise UserError(f"{what}: {str(name)[:40]!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise UserError(f"{what}: {name} is not available here ({torch.cuda.device_count()} CUDA device(s))")
    return device


def environment() -> dict[str, Any]:
    """Device, library versions, CPU count, torch threads and load average of this process."""
    import diffusers
    import numpy
    import transformers

    import distar

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "distar": distar.__version__,
        "cpus": os.cpu_count(),
        "torch_threads_per_process": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
