"""Run records: a JSONL file of per-step records, peak-memory probes and sample-grid images."""

from __future__ import annotations

import json
import logging
import math
import resource
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak on a GPU, peak RSS otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _json_value(value: object) -> object:
    """A record value as strict JSON allows it: non-finite floats become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class JsonlLog:
    """Append-only ``log.jsonl``: one strict-JSON object per training step (non-finite values are null).

    A torn last line (the process was killed while writing it) is ignored when reading and dropped by
    :meth:`truncate_after`; so is any other line that does not parse, with a warning.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _lines(self) -> list[tuple[str, dict]]:
        """(raw line, record) for every line that parses as a JSON object with an integer step."""
        if not self.path.exists():
            return []
        kept, bad = [], 0
        for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    kept.append((line, record))
                    continue
            except json.JSONDecodeError:
                pass
            bad += 1
        if bad:
            logger.warning("%s: ignored %d line(s) that are not step records (torn or corrupted)", self.path, bad)
        return kept

    def truncate_after(self, step: int) -> None:
        """Keep only the records up to ``step``; later ones were written by a run that died after its
        last checkpoint. The file is replaced atomically."""
        if not self.path.exists():
            return
        kept = "".join(line + "\n" for line, record in self._lines() if record["step"] <= step)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(kept)
        tmp.replace(self.path)

    def write(self, records: Iterable[dict[str, float]]) -> None:
        """Append ``records``; a failed write (a full disk) raises an OSError naming the file, and the torn
        line it may leave is dropped on resume."""
        lines = "".join(json.dumps({k: _json_value(v) for k, v in r.items()}, allow_nan=False) + "\n" for r in records)
        try:
            with self.path.open("a") as f:
                f.write(lines)
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(self.path)) from None

    def read(self) -> list[dict[str, float]]:
        return [record for _, record in self._lines()]


def image_grid(images: Tensor, rows: int) -> Tensor:
    """Tile images (rows·cols, 3, H, W) into one (3, rows·H, cols·W) image, row-major."""
    n, c, h, w = images.shape
    cols = n // rows
    return images.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)


def save_png(image: Tensor, path: str | Path) -> None:
    """Write a (3, H, W) image in [0, 1] as PNG, atomically."""
    from distar.io import png_bytes, write_atomic

    write_atomic(Path(path), png_bytes(image))
