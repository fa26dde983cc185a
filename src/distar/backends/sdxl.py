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

    def _unet_kwargs(self, cond: TextConditioning, dtype: torch.dtype) -> dict[str, Any]:
        assert cond.pooled is not None, "SDXL conditioning needs pooled text embeddings"
        size = [self.resolution, self.resolution]
        time_ids = torch.tensor([size + [0, 0] + size], device=cond.embeds.device, dtype=dtype)
        added = {"text_embeds": cond.pooled.to(dtype), "time_ids": time_ids.expand(len(cond), -1)}
        return {**super()._unet_kwargs(cond, dtype), "added_cond_kwargs": added}
