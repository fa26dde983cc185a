"""Image-model adapters for evaluation (:class:`distar.protocols.ImageModel`).

:class:`DiffusersModel` runs any diffusers text-to-image pipeline — a multi-step baseline (SDXL,
50 steps, CFG 7.5) or an exported one-step distar generator (1 step, no CFG, ``timesteps=[t_init]``)
— and, through :mod:`distar.export.pipeline`, a distar training checkpoint. Models are described by a
:class:`ModelSpec`, written on the command line as ``PATH::key=value,...``.
"""

from __future__ import annotations

import gc
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from distar.config import ConfigError, field, from_dict, parse_yaml
from distar.errors import Cancelled, first_line
from distar.io import DTYPES, safe_name
from distar.runtime import check_image_side


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
        if not self.path:
            raise ConfigError("model: path is empty")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"model {self.path}: steps must be ≥ 1, got {self.steps}")
        safe_name(self.label, f"model {self.path}: name")  # results go to <out>/<label>/
        for side in ("height", "width"):
            check_image_side(getattr(self, side), f"model {self.path}: {side}")

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        """``dtype``, else float16 on CUDA and float32 elsewhere."""
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


def is_training_checkpoint(path: str | Path) -> bool:
    """A distar training checkpoint (``checkpoint-<step>/`` with ``generator.safetensors``) or a run
    folder holding such checkpoints (the latest is used)."""
    folder = Path(path)
    if not folder.is_dir() or (folder / "model_index.json").is_file():
        return False
    if (folder / "generator.safetensors").is_file():
        return True
    from distar.train.checkpoint import list_checkpoints

    return bool(list_checkpoints(folder))


def distar_metadata(path: str | Path) -> dict[str, Any] | None:
    """What a distar export's ``distar.json`` records (t_init, timesteps, family, resolution, …), or
    the same for a training checkpoint; None for any other model."""
    folder = Path(path)
    if (folder / "distar.json").is_file():
        return dict(json.loads((folder / "distar.json").read_text()))
    if is_training_checkpoint(folder):
        from distar.export.pipeline import checkpoint_model_config, export_metadata, find_checkpoint

        cfg = checkpoint_model_config(find_checkpoint(folder))
        return {**export_metadata(folder), "resolution": cfg.resolution}
    return None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _stopper(stop: Callable[[], bool]) -> Callable[..., dict]:
    """A diffusers ``callback_on_step_end`` that raises :class:`~distar.errors.Cancelled` once ``stop()``."""

    def check(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        if stop():
            raise Cancelled("sampling stopped")
        return tensors

    return check


class DiffusersModel:
    """A diffusers text-to-image pipeline as an :class:`~distar.protocols.ImageModel`.

    distar generators (exported folders and training checkpoints) default to their own k steps
    (``timesteps=[t_init]`` for one step; ``sigmas`` for SD3) without CFG; spec options override these
    defaults. The pipeline is
    loaded on first use and released by :meth:`unload`. Each image's initial noise comes from its
    own CPU ``torch.Generator`` seeded with its seed, so an image depends on its (prompt, seed) only,
    not on the batch it is drawn in or on the device.
    """

    def __init__(self, spec: ModelSpec, pipeline: Any | None = None) -> None:
        self.spec = spec
        self.name = spec.label
        self.device = torch.device(spec.device or default_device())
        self.metadata = distar_metadata(spec.path)
        self.t_init = self.metadata["t_init"] if self.metadata else None
        self._pipeline = pipeline

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.torch_dtype(self.device)

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            self._pipeline = self._load()
        return self._pipeline

    def _load(self) -> Any:
        if self.t_init is not None and is_training_checkpoint(self.spec.path):
            from distar.export.pipeline import pipeline_from_checkpoint

            pipe = pipeline_from_checkpoint(self.spec.path, use_ema=self.spec.ema)
        else:
            from diffusers import DiffusionPipeline

            kwargs = {"variant": self.spec.variant} if self.spec.variant else {}
            try:
                pipe = DiffusionPipeline.from_pretrained(self.spec.path, dtype=self.dtype, **kwargs)
            except (OSError, ValueError) as err:  # missing folder, bad hub id, hub unreachable
                raise FileNotFoundError(
                    f"model '{self.spec.path}': cannot load a diffusers pipeline ({first_line(err)})"
                ) from None
        if self.spec.unet:
            from distar.backends.loading import load_unet_init

            pipe.register_modules(unet=load_unet_init(self.spec.unet, pipe.unet.config))
        if self.spec.scheduler:
            import diffusers

            cls = getattr(diffusers, self.spec.scheduler, None)
            if cls is None or not hasattr(cls, "from_config"):
                raise ConfigError(f"model {self.name}: unknown diffusers scheduler '{self.spec.scheduler}'")
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device, self.dtype)

    def sampling_options(self) -> dict[str, Any]:
        """The keyword arguments given to the pipeline besides prompts and generators."""
        spec = self.spec
        options: dict[str, Any] = {}
        if self.metadata is not None:
            from distar.export.pipeline import generator_call

            options = {k: v for k, v in generator_call(self.metadata).items() if v is not None}
            if spec.steps not in (None, options["num_inference_steps"]):  # other steps: the scheduler's own
                options = {k: v for k, v in options.items() if k not in ("timesteps", "sigmas")}
        given = {
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance,
            "timesteps": spec.timesteps,
            "height": spec.height,
            "width": spec.width,
        }
        return options | {k: v for k, v in given.items() if v is not None}

    @torch.no_grad()
    def generate_images(
        self, prompts: Sequence[str], seeds: Sequence[int], stop: Callable[[], bool] | None = None
    ) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] (float32, CPU), one per (prompt, seed). A pipeline run raises
        :class:`~distar.errors.Cancelled` after the first step at which ``stop()`` is true."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        options = self.sampling_options()
        if getattr(self.pipeline, "vae", None) is None and self.t_init is not None:
            # Pixel-space distar generator: no standard pipeline output; its own steps.
            from distar.export.pipeline import generator_images

            size = {k: options.pop(k, None) for k in ("height", "width")}
            images = generator_images(self.pipeline, prompts, seeds, call=options, **size)
        else:
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
            if stop is not None:
                options["callback_on_step_end"] = _stopper(stop)
            images = self.pipeline(prompt=list(prompts), generator=generators, output_type="pt", **options).images
        return images.float().clamp(0, 1).cpu()

    def unload(self) -> None:
        """Free the pipeline (reloaded on next use)."""
        self._pipeline = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        """What was run, for the summary."""
        info = {"path": self.spec.path, "dtype": str(self.dtype).removeprefix("torch."), **self.sampling_options()}
        extra = {"t_init": self.t_init, "unet": self.spec.unet, "scheduler": self.spec.scheduler}
        return info | {k: v for k, v in extra.items() if v is not None}
