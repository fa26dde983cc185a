"""distar's local cache: downloads and locally built models (``$DISTAR_CACHE``, default ``~/.cache/distar``)."""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

#: Where each kind of tiny stand-in named in a config (``pretrained: tiny:<name>``, a reward's
#: ``path: tiny``, ``--metric-path fid=tiny``) is built: a ``module:function`` of :mod:`distar.testing`
#: returning its path. It is imported on first use, by name: the packages that accept ``tiny`` names
#: (backends, rewards, eval) sit below distar.testing and never import it.
TINY_ASSETS: dict[str, str] = {
    "pipeline": "distar.testing.pipelines:tiny_pipeline_path",
    "reward": "distar.testing.reward_models:tiny_reward_path",
    "inception": "distar.testing.inception:tiny_inception_path",
}


def cache_dir() -> Path:
    """Where locally built models live: ``$DISTAR_CACHE`` or ``~/.cache/distar``."""
    return Path(os.environ.get("DISTAR_CACHE", Path.home() / ".cache" / "distar"))


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Build into ``target`` once; safe across processes.

    The build goes to a temporary sibling folder, marked complete and renamed into place, so
    concurrent processes (e.g. the ranks of a ``torchrun`` job) never see a half-written model.
    """
    if not (target / ".complete").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        build(tmp)
        (tmp / ".complete").touch()
        try:
            tmp.rename(target)
        except OSError:  # built concurrently by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_asset(kind: str, **options: Any) -> Path:
    """The path of a tiny stand-in of ``kind`` (a key of :data:`TINY_ASSETS`), built once into the cache;
    ``options`` (e.g. ``name=``) go to its builder."""
    module, _, function = TINY_ASSETS[kind].partition(":")
    return getattr(importlib.import_module(module), function)(**options)
