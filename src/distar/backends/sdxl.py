"""SDXL: two text encoders, pooled text embeddings and micro-conditioning time ids.

The UNet receives ``added_cond_kwargs = {"text_embeds": pooled, "time_ids": (H, W, 0, 0, H, W)}``
(original size, crop top-left, target size), as the SDXL pipeline builds them for an uncropped
H × W image. The empty-prompt conditioning follows the pipeline's ``force_zeros_for_empty_prompt``
(SDXL-base: zeros).
"""

from __future__ import annotations

from typing import Any

import torch

from distar.backends.sd import StableDiffusionBackend, TextConditioning


class StableDiffusionXLBackend(StableDiffusionBackend):
    """:class:`StableDiffusionBackend` with SDXL's prompt encoding and added conditioning."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._time_ids_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _encode(self, prompts: list[str]) -> TextConditioning:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return TextConditioning(embeds, pooled)

    def _encode_uncond(self) -> TextConditioning:
        _, embeds, _, pooled = self.pipe.encode_prompt(
            [""], device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True
        )
        return TextConditioning(embeds, pooled)

    def _time_ids(self, device: torch.device, dtype: torch.dtype, batch_size: int) -> torch.Tensor:
        """(H, W, 0, 0, H, W) per sample; made once per device and dtype (no host-to-device copy per call)."""
        key = (device, dtype)
        if key not in self._time_ids_cache:
            size = [self.resolution, self.resolution]
            self._time_ids_cache[key] = torch.tensor([size + [0, 0] + size], device=device, dtype=dtype)
        return self._time_ids_cache[key].expand(batch_size, -1)

    def _denoiser_kwargs(self, cond: TextConditioning, dtype: torch.dtype) -> dict[str, Any]:
        assert cond.pooled is not None, "SDXL conditioning needs pooled text embeddings"
        added = {"text_embeds": cond.pooled.to(dtype), "time_ids": self._time_ids(cond.embeds.device, dtype, len(cond))}
        return {**super()._denoiser_kwargs(cond, dtype), "added_cond_kwargs": added}
