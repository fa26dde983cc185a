"""The image models evaluation runs: :mod:`distar.inference`'s, named here too.

A model is described by a :class:`ModelSpec`, written on the command line as ``PATH::key=value,...``;
:class:`DiffusersModel` runs it (a diffusers pipeline, a distar export, a training checkpoint or run folder).
"""

from __future__ import annotations

from distar.eval.spec import ModelSpec, parse_model_spec
from distar.inference import DiffusersModel, default_device, distar_metadata, is_training_checkpoint

__all__ = [
    "DiffusersModel", "ModelSpec", "default_device", "distar_metadata", "is_training_checkpoint", "parse_model_spec",
]
