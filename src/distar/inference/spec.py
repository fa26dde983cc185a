"""How a model to evaluate or sample is named on the command line: :class:`ModelSpec`, written as
``PATH::key=value,...`` (:func:`parse_model_spec`).

Kept apart from :mod:`distar.inference.models` so that command-line definitions import no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from distar.config import ConfigError, field, from_dict, parse_yaml
from distar.runtime import check_image_side

if TYPE_CHECKING:
    import torch


@dataclass
class ModelSpec:
    """One model to evaluate and how to sample from it (``None`` = the pipeline's own default)."""

    path: str = field(help="diffusers pipeline folder or hub id, or a distar training checkpoint folder")
    name: str | None = field(None, help="row name in the tables and results folder (default: from path)")
    steps: int | None = field(None, help="num_inference_steps")
    guidance: float | None = field(None, help="classifier-free guidance scale ω (≤ 1 disables CFG)")
    timesteps: list[int] | None = field(None, help="explicit timesteps, e.g. [399] for a one-step generator")
    scheduler: str | None = field(None, help="diffusers scheduler class to swap in, e.g. LCMScheduler")
    unet: str | None = field(
        None,
        help="UNet to swap in: a diffusers UNet folder, a state-dict file, or a hub file 'owner/repo/file' "
        "(e.g. tianweiy/DMD2/dmd2_sdxl_1step_unet_fp16.bin on stabilityai/stable-diffusion-xl-base-1.0)",
    )
    height: int | None = field(None, help="image height in pixels, a multiple of 8 (default: the model's)")
    width: int | None = field(None, help="image width in pixels, a multiple of 8 (default: the model's)")
    dtype: Literal["float32", "float16", "bfloat16"] | None = field(
        None, help="weights dtype (default: float16 on cuda, else float32)"
    )
    variant: str | None = field(None, help="weights variant to load, e.g. fp16")
    device: str | None = field(None, help="torch device (default: cuda if available, else cpu)")
    ema: bool = field(True, help="training checkpoints: use the EMA generator weights when saved")

    def __post_init__(self) -> None:
        from distar.io import safe_name

        if not self.path:
            raise ConfigError("model: path is empty")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"model {self.path}: steps must be ≥ 1, got {self.steps}")
        safe_name(self.label, f"model {self.path}: name")  # results go to <out>/<label>/
        for side in ("height", "width"):
            check_image_side(getattr(self, side), f"model {self.path}: {side}")

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        """``dtype``, else float16 on CUDA and float32 elsewhere."""
        import torch

        from distar.io import DTYPES

        if self.dtype is not None:
            return DTYPES[self.dtype]
        return torch.float16 if device.type == "cuda" else torch.float32

    @property
    def label(self) -> str:
        """A file-system-safe name: ``name`` if given, else the last part of the path."""
        raw = self.name or Path(self.path.rstrip("/")).resolve().name or self.path
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", raw)


def _split_options(text: str) -> list[str]:
    """Split ``a=1,b=[2,3]`` on commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in [*parts, current] if p.strip()]


def parse_model_spec(text: str) -> ModelSpec:
    """``PATH[::key=value,...]`` → :class:`ModelSpec`; values are YAML (``timesteps=[999,499]``)."""
    path, _, options = text.partition("::")
    data: dict[str, Any] = {"path": path}
    for item in _split_options(options):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"model option '{item}' is not of the form key=value (in '{text}')")
        data[key.strip()] = parse_yaml(value, f"model option '{key.strip()}'")
    if isinstance(data.get("timesteps"), int):
        data["timesteps"] = [data["timesteps"]]
    if isinstance(data.get("name"), (int, float)):
        data["name"] = str(data["name"])
    return from_dict(ModelSpec, data, prefix="model.")
