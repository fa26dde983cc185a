"""Run records: a JSONL file of per-step records, peak-memory probes and sample-grid images."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from distar import runstate


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak on a GPU, peak RSS otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _has_step(record: dict) -> bool:
    return isinstance(record.get("step"), int)


class JsonlLog(runstate.JsonlLog):
    """``log.jsonl`` (and the monitor's ``monitor.jsonl``): one record per step, each with an integer
    ``step`` (a line without one is skipped as torn). :meth:`write` appends, as
    :meth:`~distar.runstate.JsonlLog.append` does."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, accept=_has_step)

    def write(self, records: Iterable[dict[str, float]]) -> None:
        """Append ``records`` (non-finite values are written as null)."""
        self.append(records)


def image_grid(images: Tensor, rows: int) -> Tensor:
    """Tile images (rows·cols, 3, H, W) into one (3, rows·H, cols·W) image, row-major."""
    n, c, h, w = images.shape
    cols = n // rows
    return images.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)


def save_png(image: Tensor, path: str | Path) -> None:
    """Write a (3, H, W) image in [0, 1] as PNG, atomically."""
    from distar.io import png_bytes

    runstate.write_atomic(Path(path), png_bytes(image))
