"""distar's local cache: downloads and locally built models (``$DISTAR_CACHE``, default ``~/.cache/distar``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


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
