"""Making images from a model: one way to load every kind of source, one interface for what it gives.

Everything that makes images (``distar generate``, ``distar eval``, ``distar serve``, the worlds' builds
and demos, the trainer's sample grids) gets an :class:`~distar.protocols.ImageModel` —
``generate_images(prompts, seeds) -> (B, 3, H, W)`` in [0, 1], each image depending on its (prompt,
seed) only — from here:

- :class:`DiffusersModel` (:mod:`.models`) for a :class:`ModelSpec` (:mod:`.spec`) naming a ``distar
  export`` folder, a training checkpoint (``checkpoint-<step>/``, ``best/``), a run folder (its latest
  checkpoint) or any diffusers pipeline folder or hub id; a distar generator among them is marked
  :attr:`~DiffusersModel.few_step` and sampled at its recorded steps;
- :class:`~distar.protocols.BackendModel` for a live :class:`~distar.protocols.Backend` (it lives with
  the protocols, below the trainer that uses it).

Names are imported on first use, so that reading a :class:`ModelSpec` (command-line definitions) loads
no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name → module; imported on first use.
_HOMES = {
    "ModelSpec": "distar.inference.spec", "parse_model_spec": "distar.inference.spec",
    "DiffusersModel": "distar.inference.models", "default_device": "distar.inference.models",
    "distar_metadata": "distar.inference.models", "hub_metadata": "distar.inference.models",
    "is_local": "distar.inference.models", "is_pixel_folder": "distar.inference.models",
    "is_training_checkpoint": "distar.inference.models",
    "BackendModel": "distar.protocols",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'distar.inference' has no attribute '{name}'")
    return getattr(importlib.import_module(_HOMES[name]), name)


__all__ = sorted(_HOMES)
