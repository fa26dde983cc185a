"""Models that make images from files: :class:`DiffusersModel` for every source a path or hub id names.

A :class:`~distar.inference.spec.ModelSpec`'s path can be a ``distar export`` folder, a training
``checkpoint-<step>/`` (or ``best/``) folder, a run folder (its latest checkpoint), or any diffusers
pipeline folder or hub id. Whether the model is a distar generator is explicit, :attr:`DiffusersModel.few_step`:
true when the source records how it samples (an export's ``distar.json``, a hub repo's, a checkpoint's
config); such a model runs its own k steps (``timesteps``/``sigmas``) without CFG, one network evaluation
each, exactly as ``distar generate`` runs it. Any other pipeline is a multi-step diffusion model, run at
the spec's steps and guidance.
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
from distar.inference.spec import ModelSpec
from distar.io import HUB_ID

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------- what a source is


def is_training_checkpoint(path: str | Path) -> bool:
    """A distar training checkpoint (``checkpoint-<step>/`` or ``best/`` with ``generator.safetensors``)
    or a run folder holding such checkpoints (the latest is used)."""
    folder = Path(path)
    if not folder.is_dir() or (folder / "model_index.json").is_file():
        return False
    if (folder / "generator.safetensors").is_file():
        return True
    from distar.train.checkpoint import list_checkpoints

    return bool(list_checkpoints(folder))


def is_local(path_or_id: str) -> bool:
    """True for an existing path; a missing path that cannot be a hub id (``owner/name``) is an error."""
    if Path(path_or_id).exists():
        return True
    if path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") != 1:
        raise FileNotFoundError(f"{path_or_id}: no such folder (nor a hub id of the form owner/name)")
    return False


def is_pixel_folder(path: str | Path) -> bool:
    """A local diffusers-style folder with a UNet and no VAE."""
    folder = Path(path)
    return (folder / "unet").is_dir() and (folder / "model_index.json").is_file() and not (folder / "vae").is_dir()


def hub_metadata(repo_id: str) -> dict[str, Any] | None:
    """A hub repo's ``distar.json``; None when there is none or it cannot be read."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from distar.export.card import METADATA_FILE

    try:
        metadata = json.loads(Path(hf_hub_download(repo_id, METADATA_FILE)).read_text())
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) and "t_init" in metadata else None


def distar_metadata(path: str | Path) -> dict[str, Any] | None:
    """How a distar generator samples (t_init, timesteps, family, resolution, …): an export's
    ``distar.json``, a hub repo's, or the same for a training checkpoint; None for any other model."""
    from distar.export.card import METADATA_FILE

    folder = Path(path)
    if (folder / METADATA_FILE).is_file():
        return dict(json.loads((folder / METADATA_FILE).read_text()))
    if is_training_checkpoint(folder):
        from distar.export.pipeline import checkpoint_model_config, export_metadata, find_checkpoint

        cfg = checkpoint_model_config(find_checkpoint(folder))
        return {**export_metadata(folder), "resolution": cfg.resolution}
    if not folder.exists() and HUB_ID.match(str(path)):
        return hub_metadata(str(path))
    return None


# ---------------------------------------------------------------------- diffusers pipelines


def _stopper(stop: Callable[[], bool]) -> Callable[..., dict]:
    """A diffusers ``callback_on_step_end`` that raises :class:`~distar.errors.Cancelled` once ``stop()``."""

    def check(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        if stop():
            raise Cancelled("sampling stopped")
        return tensors

    return check


class DiffusersModel:
    """A diffusers text-to-image pipeline as an :class:`~distar.protocols.ImageModel`.

    A distar generator (:attr:`few_step`) defaults to its own k steps (``timesteps=[t_init]`` for one
    step; ``sigmas`` for flow transformers) without CFG, sampled as ``distar generate`` samples it
    (:func:`distar.export.pipeline.generator_images`); spec options override these defaults. The pipeline
    is loaded on first use and released by :meth:`unload`. Each image's initial noise comes from its own
    CPU ``torch.Generator`` seeded with its seed, so an image depends on its (prompt, seed) only, not on
    the batch it is drawn in or on the device.
    """

    def __init__(self, spec: ModelSpec, pipeline: Any | None = None) -> None:
        self.spec = spec
        self.name = spec.label
        self.device = torch.device(spec.device or default_device())
        self.metadata = distar_metadata(spec.path)
        #: A distar generator, sampled at its recorded steps; otherwise a multi-step diffusion pipeline.
        self.few_step = self.metadata is not None
        self._pipeline = pipeline

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.torch_dtype(self.device)

    @property
    def t_init(self) -> int | None:
        """A generator's first timestep, as recorded; None for a multi-step pipeline."""
        return self.metadata.get("t_init") if self.metadata else None

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            self._pipeline = self._load()
        return self._pipeline

    def _load(self) -> Any:
        from diffusers import DiffusionPipeline

        local = Path(self.spec.path).exists()
        if self.few_step and local:  # an export folder, a checkpoint or a run folder
            from distar.export.pipeline import checkpoint_model_config, find_checkpoint, load_generator, training_resolution

            pipe, _ = load_generator(self.spec.path, use_ema=self.spec.ema, dtype=self.dtype)
            if is_training_checkpoint(self.spec.path) and self.metadata.get("resolution") is None:
                # trained at the reference's default size: the side the export would record
                cfg = checkpoint_model_config(find_checkpoint(self.spec.path))
                self.metadata = {**self.metadata, "resolution": training_resolution(cfg, pipe)}
        else:
            from distar.backends.loading import absent_components

            kwargs: dict[str, Any] = {"variant": self.spec.variant} if self.spec.variant else {}
            try:
                kwargs |= absent_components(self.spec.path) if local else {}
                pipe = DiffusionPipeline.from_pretrained(self.spec.path, dtype=self.dtype, **kwargs)
            except (OSError, ValueError) as err:  # missing folder, bad hub id, hub unreachable
                raise FileNotFoundError(
                    f"model '{self.spec.path}': cannot load a diffusers pipeline ({first_line(err)})"
                ) from None
        if self.spec.unet:
            from distar.backends.loading import load_denoiser_init
            from distar.backends.lora import cast_

            pipe.register_modules(unet=cast_(load_denoiser_init(self.spec.unet, pipe.unet.config), self.dtype))
        if self.spec.scheduler:
            import diffusers

            cls = getattr(diffusers, self.spec.scheduler, None)
            if cls is None or not hasattr(cls, "from_config"):
                raise ConfigError(f"model {self.name}: unknown diffusers scheduler '{self.spec.scheduler}'")
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)  # loaded in self.dtype (diffusers' dtype cast warns of float32-kept modules)

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
        """Images (B, 3, H, W) in [0, 1] (float32, CPU), one per (prompt, seed). A multi-step run raises
        :class:`~distar.errors.Cancelled` after the first step at which ``stop()`` is true; a generator's
        few steps run to the end."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        pipe = self.pipeline  # loaded before the options: loading completes a checkpoint's metadata
        options = self.sampling_options()
        if self.few_step:
            from distar.export.pipeline import generator_images

            size = {k: options.pop(k, None) for k in ("height", "width")}
            images = generator_images(pipe, prompts, seeds, call=options, **size)
        else:
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
            if stop is not None:
                options["callback_on_step_end"] = _stopper(stop)
            images = pipe(prompt=list(prompts), generator=generators, output_type="pt", **options).images
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
