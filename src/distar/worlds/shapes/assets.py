"""The models shipped with the package (built by ``distar world build shapes``) and their loaders."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPModel, CLIPTokenizer

from distar.config import ConfigError
from distar.rewards.hub import quiet_transformers

#: Package folder holding ``clip/``, ``judge/``, ``reward/``, ``reference/``, ``one_step/``, ``build_record.json``.
ASSETS_DIR = Path(__file__).resolve().parent / "models"


def asset(name: str, root: str | Path | None = None) -> Path:
    """Path of one shipped model folder (``clip``, ``judge``, ``reward``, ``reference``, ``one_step``), checked to exist."""
    path = Path(root or ASSETS_DIR) / name
    if not path.is_dir():
        raise ConfigError(f"shapes world model '{name}' not found at {path}: run `distar world build shapes`")
    return path


def load_clip(name: str = "clip", root: str | Path | None = None) -> tuple[CLIPModel, CLIPTokenizer]:
    """A shipped CLIP-like model (``clip`` or ``reward``) and its tokenizer, in eval mode."""
    path = asset(name, root)
    with quiet_transformers():
        return CLIPModel.from_pretrained(path).eval(), CLIPTokenizer.from_pretrained(path)


def build_record(root: str | Path | None = None) -> dict:
    """The shipped build record (config, seeds, timings, versions, quality figures)."""
    return json.loads((Path(root or ASSETS_DIR) / "build_record.json").read_text())
