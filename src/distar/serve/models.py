"""The models behind ``distar serve``, loaded once at start (through :mod:`distar.inference`).

- the one-step model: a ``distar export`` folder, a training checkpoint or run folder (latest
  checkpoint, EMA weights when saved), a diffusers pipeline folder or hub id (a distar generator at its
  recorded steps; any other pipeline at one step without CFG), or by default the shapes world's shipped
  one-step generator;
- an optional reference for comparison, sampled at the steps and CFG ω each request asks for: any
  diffusers pipeline (folder or hub id), or a pixel-space folder without a VAE like the shapes
  world's reference (by default, with the shipped one-step model).
"""

from __future__ import annotations

import dataclasses

import torch

from distar.eval.spec import ModelSpec
from distar.inference import BackendModel, DiffusersModel, PixelReference, Reference, is_local, load_reference
from distar.protocols import ImageModel


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
