"""A tiny stand-in for the FID Inception torchscript, for tests and offline trials.

It has the call signature of ``inception-2015-12-05.pt`` — ``model(x, return_features=True)`` on
float images in [0, 255] — so it loads through :class:`~distar.eval.fid.InceptionV3Features`
unchanged. Its features are meaningless; the FID arithmetic on them is real.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from distar.io import build_once, cache_dir


class TinyInception(nn.Module):
    """Strided conv + global average pool: (B, 3, H, W) in [0, 255] → (B, num_features)."""

    def __init__(self, num_features: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_features, kernel_size=8, stride=8)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        features = self.conv(x / 127.5 - 1.0).relu().mean(dim=(2, 3))
        return features if return_features else features.softmax(dim=-1)


def save_tiny_inception(path: str | Path, num_features: int = 16, seed: int = 0) -> Path:
    """Write a seeded :class:`TinyInception` as a torchscript file; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyInception(num_features).eval()
    torch.jit.script(model).save(str(path))
    return path


def tiny_inception_path() -> Path:
    """A tiny Inception file (``--metric-path fid=tiny``), built once into ``$DISTAR_CACHE/tiny-inception``."""
    folder = build_once(cache_dir() / "tiny-inception", lambda d: save_tiny_inception(d / "tiny-inception.pt"))
    return folder / "tiny-inception.pt"
