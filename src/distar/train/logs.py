"""Run records: a JSONL file of per-step records, peak-memory probes and sample-grid images."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak on a GPU, peak RSS otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class JsonlLog:
    """Append-only ``log.jsonl``: one JSON object per training step."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written by a run that died after its last checkpoint)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, records: Iterable[dict[str, float]]) -> None:
        with self.path.open("a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, float]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def image_grid(images: Tensor, rows: int) -> Tensor:
    """Tile images (rows·cols, 3, H, W) into one (3, rows·H, cols·W) image, row-major."""
    n, c, h, w = images.shape
    cols = n // rows
    return images.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)


def save_png(image: Tensor, path: str | Path) -> None:
    """Write a (3, H, W) image in [0, 1] as PNG."""
    from PIL import Image

    array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)
