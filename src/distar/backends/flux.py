"""FLUX.1: a flow-matching MMDiT on 2 × 2-packed latents, T5 tokens + CLIP pooled, a guidance embedding.

The flow parametrisation is SD3's (:mod:`distar.backends.sd3`): x_t = (1 − t) x0 + t ε, velocity
output, x̂0 = x_t − t û. The backend works on unpacked latents (B, C, h, w), drawn as the FLUX
pipeline draws them, and packs them into (B, h/2 · w/2, 4C) tokens with the pipeline's own position
ids around each transformer call. The transformer is fed t itself (the pipeline's ``timestep / 1000``).
The schedule's shift is the dynamic one for the training resolution's token count.

A guidance-distilled transformer (FLUX.1-dev, ``guidance_embeds``) takes the guidance scale as an input:
all three models get ``guidance`` (``model.guidance``), which is the reference's built-in, "inner" CFG.
Two-pass CFG (3.5, ``objective.guidance_scale`` > 1) comes on top of it, with ∅ the empty prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from diffusers import FluxPipeline
from torch import Tensor, nn

from distar.backends.sd import TextConditioning
from distar.backends.sd3 import StableDiffusion3Backend
from distar.diffusion import FlowMatchSchedule, Schedule
from distar.protocols import NoiseGenerators


class FluxBackend(StableDiffusion3Backend):
    """:class:`StableDiffusion3Backend` with FLUX's prompt encoding, latent packing and guidance input."""

    def __init__(self, *args: Any, guidance: float = 3.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guidance = guidance
        self.guidance_embeds = bool(extract_model_from_parallel(self.assistant).config.guidance_embeds)

    def _default_resolution(self, denoiser_config: Any) -> int:
        return self.pipe.default_sample_size * self.vae_scale_factor  # FluxPipeline's default (1024 px)

    def _latent_shape(self, denoiser_config: Any) -> tuple[int, int, int]:
        """Unpacked (C, h, w): 4 channels per token, h and w even, as ``FluxPipeline.prepare_latents``."""
        side = 2 * (self.resolution // (self.vae_scale_factor * 2))
        return (denoiser_config.in_channels // 4, side, side)

    def _make_schedule(self, scheduler: Any) -> Schedule:
        tokens = (self.latent_shape[1] // 2) * (self.latent_shape[2] // 2)
        return FlowMatchSchedule.from_scheduler_config(scheduler.config, image_seq_len=tokens)

    def _encode(self, prompts: list[str]) -> TextConditioning:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompts, None, device=self.device, num_images_per_prompt=1, max_sequence_length=self.max_sequence_length
        )
        return TextConditioning(embeds, pooled)

    def _pack(self, x: Tensor) -> Tensor:
        batch, channels, h, w = x.shape
        return FluxPipeline._pack_latents(x, batch, channels, h, w)

    def _unpack(self, tokens: Tensor) -> Tensor:
        return FluxPipeline._unpack_latents(tokens, self.resolution, self.resolution, self.vae_scale_factor)

    def _noise_like(self, x0: Tensor, generator: NoiseGenerators) -> Tensor:
        """Drawn in the packed layout, as the pipeline's stochastic scheduler step draws it."""
        return self._unpack(super()._noise_like(self._pack(x0), generator))

    def _forward(self, denoiser: nn.Module, x_t: Tensor, t: Tensor, cond: TextConditioning, dtype: torch.dtype) -> Tensor:
        assert cond.pooled is not None, "FLUX conditioning needs pooled CLIP embeddings"
        batch, _, h, w = x_t.shape
        guidance = torch.full((batch,), self.guidance, device=x_t.device) if self.guidance_embeds else None
        out = denoiser(
            hidden_states=self._pack(x_t),
            timestep=t.float(),
            guidance=guidance,
            pooled_projections=cond.pooled.to(dtype),
            encoder_hidden_states=cond.embeds.to(dtype),
            txt_ids=torch.zeros(cond.embeds.shape[1], 3, device=x_t.device, dtype=dtype),
            img_ids=FluxPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, x_t.device, dtype),
            return_dict=False,
        )[0]
        return self._unpack(out)
