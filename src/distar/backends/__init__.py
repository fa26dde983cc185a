"""Diffusers backends: SD 1.5/2.x and SDXL latent (or pixel-space) UNets, SD3/SD3.5, FLUX.1 and SANA
transformers behind :class:`distar.protocols.Backend`.

``ModelConfig`` is importable without diffusers; the rest loads diffusers on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from distar.backends.config import ModelConfig

_LAZY = {
    "build_backend": "distar.backends.build",
    "build_generator": "distar.backends.build",
    "StableDiffusionBackend": "distar.backends.sd",
    "StableDiffusionXLBackend": "distar.backends.sdxl",
    "StableDiffusion3Backend": "distar.backends.sd3",
    "FluxBackend": "distar.backends.flux",
    "SanaBackend": "distar.backends.sana",
    "TextConditioning": "distar.backends.sd",
    "trainable_state_dict": "distar.backends.weights",
    "load_trainable_state_dict": "distar.backends.weights",
}

__all__ = ["ModelConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distar.backends' has no attribute {name!r}")
