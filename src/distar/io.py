"""Small shared helpers for files, images and dtypes: atomic writes, image tensors ↔ pixels, dtype names."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from distar.config import ConfigError
from distar.errors import UserError, first_line

#: Config dtype names → torch dtypes.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``"bfloat16"`` → ``torch.bfloat16``; dtypes and None pass through."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: readers see
    the old file or the whole new one, never a part."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def to_uint8(images: Tensor) -> np.ndarray:
    """Images in [0, 1], (3, H, W) or (B, 3, H, W) → channels-last uint8 pixels, rounded."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()


def png_bytes(image: Tensor) -> bytes:
    """A (3, H, W) image in [0, 1] as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def load_image(path: Path | str) -> Tensor:
    """A PNG/JPEG file → (3, H, W) float32 in [0, 1]; one-line :class:`UserError` if it is not one."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{path}: not a readable image ({first_line(err)[:120]})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
