"""The models behind ``distar serve``, loaded once at start (through :mod:`distar.inference`).

- the one-step model: a ``distar export`` folder, a training checkpoint or run folder (latest
  checkpoint, EMA weights when saved), a diffusers pipeline folder or hub id (a distar generator at its
  recorded steps; any other pipeline at one step without CFG), or by default the shapes world's shipped
  one-step generator;
- an optional :class:`Reference` for comparison, sampled at the steps and CFG ω each request asks for:
  any diffusers pipeline (folder or hub id), or a pixel-space folder without a VAE like the shapes
  world's reference (by default, with the shipped one-step model).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from distar.inference.models import DiffusersModel, is_local, is_pixel_folder
from distar.inference.spec import ModelSpec
from distar.protocols import BackendModel, ImageModel

#: Default CFG ω of a reference: the shapes world's (its demo and sampler use 3) and SD's usual 7.5.
SHAPES_GUIDANCE = 3.0
DIFFUSERS_GUIDANCE = 7.5


class Reference(Protocol):
    """A multi-step model sampled at the steps and guidance of each request."""

    name: str
    guidance: float

    def generate_images(
        self, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float, stop: Callable[[], bool] | None = None
    ) -> Tensor:
        """Images (B, 3, H, W) in [0, 1], one per (prompt, seed); :class:`~distar.errors.Cancelled` once ``stop()``."""
        ...


class DiffusersReference:
    """A diffusers pipeline run with per-request ``num_inference_steps`` and ``guidance_scale``."""

    def __init__(self, model: DiffusersModel, guidance: float = DIFFUSERS_GUIDANCE) -> None:
        self.model, self.name, self.guidance = model, model.spec.path, guidance
        model.pipeline  # load now, not on the first request

    def generate_images(
        self, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float, stop: Callable[[], bool] | None = None
    ) -> Tensor:
        spec = dataclasses.replace(self.model.spec, steps=steps, guidance=guidance)
        return DiffusersModel(spec, pipeline=self.model.pipeline).generate_images(prompts, seeds, stop)


class PixelReference:
    """A pixel-space reference folder (``unet/``, ``text_encoder/``, ``tokenizer/``, no ``vae/``) sampled
    by the shapes world's multi-step CFG sampler (DPM-Solver++)."""

    def __init__(
        self, folder: str | Path, device: torch.device, guidance: float = SHAPES_GUIDANCE, name: str | None = None
    ) -> None:
        from distar.inference.pixel import ReferenceSampler

        self.sampler = ReferenceSampler.from_pretrained(folder, guidance_scale=guidance)
        self.sampler.unet.to(device)
        self.sampler.text_encoder.to(device)
        self.name, self.guidance = name or str(folder), guidance

    def generate_images(
        self, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float, stop: Callable[[], bool] | None = None
    ) -> Tensor:
        self.sampler.steps, self.sampler.guidance_scale = steps, guidance
        return self.sampler.generate_images(prompts, seeds, stop)


def load_reference(path_or_id: str, device: torch.device) -> Reference:
    """A reference from a folder or hub id (module docstring), loaded now."""
    if is_local(path_or_id) and is_pixel_folder(path_or_id):
        return PixelReference(path_or_id, device)
    return DiffusersReference(DiffusersModel(ModelSpec(path=path_or_id, device=str(device))))


@dataclasses.dataclass
class ServedModels:
    """What a server runs: a one-step model, optionally a reference, and the page's example prompt."""

    one_step: ImageModel
    one_step_name: str
    reference: Reference | None = None
    example_prompt: str = "a photo of a cat"


def one_step_model(path_or_id: str, device: torch.device) -> DiffusersModel:
    """A one-step model from a folder or hub id (module docstring), loaded now."""
    model = DiffusersModel(ModelSpec(path=path_or_id, device=str(device)))
    if not model.few_step:  # not a distar generator: one step of the pipeline, without CFG
        model = DiffusersModel(dataclasses.replace(model.spec, steps=1, guidance=0.0))
    model.pipeline
    return model


def shapes_models(device: torch.device) -> ServedModels:
    """The shapes world's shipped one-step generator and reference (nothing is downloaded)."""
    from distar.backends import build_backend
    from distar.backends.config import ModelConfig
    from distar.worlds.shapes.assets import asset, build_record

    reference = asset("reference")
    t_init = build_record()["config"]["one_step"]["t_init"]
    config = ModelConfig(family="sd", pretrained=str(reference), t_init=t_init, generator_init=str(asset("one_step")))
    return ServedModels(
        one_step=BackendModel(build_backend(config, device=device), "one_step"),
        one_step_name="shapes world one-step generator (shipped)",
        reference=PixelReference(reference, device, name="shapes world reference (shipped)"),
        example_prompt="two small blue squares on a black background",
    )


def load_models(model: str | None, reference: str | None, device: torch.device) -> ServedModels:
    """The models for ``distar serve --model M [--reference R]``; no ``--model``: the shapes world's."""
    for path in (model, reference):
        if path is not None:
            is_local(path)  # a missing folder fails before anything loads
    if model is None:
        served = shapes_models(device)
        return served if reference is None else dataclasses.replace(served, reference=load_reference(reference, device))
    return ServedModels(
        one_step=one_step_model(model, device),
        one_step_name=model,
        reference=load_reference(reference, device) if reference is not None else None,
    )
