"""SD3 / SD3.5: an MMDiT flow-matching transformer with CLIP-L, CLIP-G and (optional) T5 text encoders.

Rectified flow (docs/math.md §1): x_t = (1 − t) x0 + t ε with t = σ ∈ (0, 1], the transformer is
fed the timestep 1000·t and predicts the velocity u = ε − x0, so x̂0 = x_t − t û. Prompts are encoded
as the SD3 pipeline encodes them: per-token embeddings = [CLIP-L ‖ CLIP-G, zero-padded to the T5
width ; T5 tokens] (T5 zeros without ``text_encoder_3``), pooled = [CLIP-L pooled ‖ CLIP-G pooled].
The empty prompt is encoded like any prompt (SD3 has no ``force_zeros_for_empty_prompt``). CFG (3.5)
is the usual two-pass guidance of the reference (the pipeline's ``guidance_scale``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distar.backends.config import FLOW_TIMESTEPS
from distar.backends.sd import StableDiffusionBackend, TextConditioning
from distar.config import ConfigError
from distar.diffusion import FlowMatchSchedule, Schedule


class StableDiffusion3Backend(StableDiffusionBackend):
    """:class:`StableDiffusionBackend` on SD3's transformer, prompt encoding and flow schedule.

    ``t_init`` counts in the transformer's 1000-step units: the generator sees z at σ = t_init/1000
    (1000: pure noise). ``max_sequence_length`` is the number of T5 tokens.
    """

    def __init__(self, *args: Any, max_sequence_length: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_sequence_length = max_sequence_length

    def _make_schedule(self, scheduler: Any) -> Schedule:
        return FlowMatchSchedule.from_scheduler_config(scheduler.config)

    def _generator_time(self, t_init: int) -> float:
        """σ = t_init / 1000."""
        if not 0 < t_init <= FLOW_TIMESTEPS:
            raise ConfigError(f"model.t_init: flow models take 1..{FLOW_TIMESTEPS}, got {t_init}")
        return t_init / FLOW_TIMESTEPS

    def _encode(self, prompts: list[str]) -> TextConditioning:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts,
            None,
            None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return TextConditioning(embeds, pooled)

    def _forward(self, denoiser: nn.Module, x_t: Tensor, t: Tensor, cond: TextConditioning, dtype: torch.dtype) -> Tensor:
        assert cond.pooled is not None, "SD3 conditioning needs pooled text embeddings"
        return denoiser(
            hidden_states=x_t,
            timestep=(t * FLOW_TIMESTEPS).float(),  # as the pipeline: float32 whatever the weights
            encoder_hidden_states=cond.embeds.to(dtype),
            pooled_projections=cond.pooled.to(dtype),
            return_dict=False,
        )[0]
