"""The image models evaluation runs, named here too: :mod:`distar.inference`'s.

A model is described by a :class:`ModelSpec`, written on the command line as ``PATH::key=value,...``;
:class:`DiffusersModel` runs it (a diffusers pipeline, a distar export, a training checkpoint or run folder).
"""

from __future__ import annotations

from distar.inference.models import DiffusersModel, default_device, distar_metadata, is_training_checkpoint
from distar.inference.spec import ModelSpec, parse_model_spec

__all__ = [
    "DiffusersModel", "ModelSpec", "default_device", "distar_metadata", "is_training_checkpoint", "parse_model_spec",
]
