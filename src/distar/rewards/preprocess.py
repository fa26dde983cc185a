"""Differentiable image preprocessing for the reward models, in torch (metrics.md §8).

The evaluation code of every reward model goes through PIL (bicubic resize, uint8); a training
reward must keep the graph from the decoded image, so the same steps are done here on float tensors:

- ``"crop"`` (CLIP, PickScore, ImageReward, aesthetic): resize the short side to ``resize``, centre
  crop ``size``×``size``;
- ``"pad"`` (HPSv2): resize the long side to ``size``, zero-pad to ``size``×``size``;

then ``(x - mean) / std``. Resizing is ``F.interpolate(bicubic, antialias=True, align_corners=False)``,
torch's PIL-like antialiased kernel, followed by a clamp to [0, 1] where the reference resizes in
PIL/uint8 (all but HPS, whose reference resizes float tensors). An image already at the target size
is not resampled. Sizes, mean and std come from the model's
``preprocessor_config.json`` when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

#: Normalisation constants of OpenAI CLIP, used by all five reward models.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def resize(images: Tensor, height: int, width: int, clamp: bool = True) -> Tensor:
    """Antialiased bicubic resize of (B, C, H, W) float images; identity if already that size.

    ``clamp`` clips the bicubic overshoot to [0, 1], as resizing in PIL/uint8 does.
    """
    if images.shape[-2:] == (height, width):
        return images
    out = F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0) if clamp else out


def _side(value: Any) -> int | None:
    """One side length from a processor-config size entry (int or dict)."""
    if value is None or isinstance(value, int):
        return value
    for key in ("shortest_edge", "height", "width"):
        if key in value:
            return int(value[key])
    return None


@dataclass(frozen=True)
class ImageTransform:
    """Images (B, 3, H, W) in [0, 1] → normalised pixel values (B, 3, size, size), differentiably."""

    size: int
    resize: int | None = None  # short-side target in "crop" mode (defaults to size)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    mode: Literal["crop", "pad"] = "crop"
    clamp: bool = True  # clip the resize overshoot to [0, 1]

    @classmethod
    def from_config(
        cls,
        processor_config: Mapping[str, Any] | None,
        image_size: int,
        mode: Literal["crop", "pad"] = "crop",
        clamp: bool = True,
    ) -> "ImageTransform":
        """From a ``CLIPImageProcessor``/``BlipImageProcessor`` config dict; ``image_size`` and the
        OpenAI constants when there is none (or it lacks a key)."""
        cfg = processor_config or {}
        crop = _side(cfg.get("crop_size")) if cfg.get("do_center_crop", True) else None
        short = _side(cfg.get("size"))
        size = crop or short or image_size
        return cls(
            size=size,
            resize=short if mode == "crop" else None,
            mean=tuple(cfg.get("image_mean", OPENAI_MEAN)),
            std=tuple(cfg.get("image_std", OPENAI_STD)),
            mode=mode,
            clamp=clamp,
        )

    def __call__(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W), got shape {tuple(images.shape)}")
        x = images.float()
        height, width = x.shape[-2:]
        if self.mode == "crop":
            # Short side → resize (HF/PIL round the long side down), then centre crop.
            short = self.resize or self.size
            scale = short / min(height, width)
            x = resize(
                x, *((short, int(width * scale)) if height <= width else (int(height * scale), short)), self.clamp
            )
            top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
            x = x[..., top : top + self.size, left : left + self.size]
        else:
            # Long side → size, then zero-pad (black, before normalisation) to a centred square.
            scale = self.size / max(height, width)
            new_h, new_w = round(height * scale), round(width * scale)
            x = resize(x, new_h, new_w, self.clamp)
            pad_h, pad_w = self.size - new_h, self.size - new_w
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std
