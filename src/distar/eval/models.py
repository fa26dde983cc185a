"""Image-model adapters for evaluation (:class:`distar.protocols.ImageModel`).

:class:`DiffusersModel` runs any diffusers text-to-image pipeline — a multi-step baseline (SDXL,
50 steps, CFG 7.5) or an exported one-step distar generator (1 step, no CFG, ``timesteps=[t_init]``)
— and, through :mod:`distar.export.pipeline`, a distar training checkpoint. Models are described by a
:class:`ModelSpec`, written on the command line as ``PATH::key=value,...``.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from distar.config import ConfigError
from distar.errors import Cancelled, first_line
from distar.eval.spec import ModelSpec, parse_model_spec

__all__ = ["DiffusersModel", "ModelSpec", "distar_metadata", "is_training_checkpoint", "parse_model_spec"]


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
