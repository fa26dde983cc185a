"""SANA: a linear-attention flow transformer on DC-AE latents, conditioned on Gemma-2 tokens.

The flow parametrisation is SD3's (:mod:`distar.backends.sd3`): x_t = (1 − t) x0 + t ε, velocity
output, x̂0 = x_t − t û; the transformer is fed the pipeline's timestep 1000·t times its
``timestep_scale``. The schedule's shift is the scheduler config's ``flow_shift`` (SANA ships a
flow-sigma ``DPMSolverMultistepScheduler``). Prompts are encoded by ``SanaPipeline.encode_prompt``
as ``SanaPipeline.__call__`` encodes them by default: lower-cased, prefixed with the pipeline's
default complex human instruction, and cut to ``max_sequence_length`` tokens (the first and the
last ones); the attention mask of those tokens goes to the transformer with them. ∅ is the empty
prompt without the instruction, as the pipeline encodes its negative prompt. CFG (3.5) is the usual
two-pass guidance of the reference (the pipeline's ``guidance_scale``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from diffusers import SanaPipeline
from torch import Tensor, nn

from distar.backends.config import FLOW_TIMESTEPS
from distar.backends.sd import TextConditioning
from distar.backends.sd3 import StableDiffusion3Backend
from distar.config import ConfigError

#: The instruction ``SanaPipeline.__call__`` puts before every prompt by default (read from its signature).
COMPLEX_HUMAN_INSTRUCTION: list[str] = list(
    inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
)

#: Image sides must be multiples of this (``SanaPipeline.check_inputs``).
SANA_SIDE_MULTIPLE = 32


class SanaBackend(StableDiffusion3Backend):
    """:class:`StableDiffusion3Backend` with SANA's prompt encoding, attention mask and timestep scale.

    Guidance-distilled SANA-Sprint transformers (``guidance_embeds``) belong to another pipeline and are
    refused.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = extract_model_from_parallel(self.assistant).config
        if config.guidance_embeds:
            raise ConfigError("model.pretrained: a SANA-Sprint transformer (guidance_embeds) is not supported")
        if self.resolution % SANA_SIDE_MULTIPLE:
            raise ConfigError(
                f"model.resolution: SANA's pipeline takes multiples of {SANA_SIDE_MULTIPLE}, got {self.resolution}"
            )
        self.timestep_scale = float(config.timestep_scale)

    def _encode(self, prompts: list[str]) -> TextConditioning:
        return self._encode_gemma(prompts, COMPLEX_HUMAN_INSTRUCTION)

    def _encode_uncond(self) -> TextConditioning:
        return self._encode_gemma([""], None)

    def _encode_gemma(self, prompts: list[str], instruction: list[str] | None) -> TextConditioning:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
            complex_human_instruction=instruction,
        )
        return TextConditioning(embeds, mask=mask)

    def _forward(self, denoiser: nn.Module, x_t: Tensor, t: Tensor, cond: TextConditioning, dtype: torch.dtype) -> Tensor:
        assert cond.mask is not None, "SANA conditioning needs the tokens' attention mask"
        return denoiser(
            hidden_states=x_t,
            encoder_hidden_states=cond.embeds.to(dtype),
            encoder_attention_mask=cond.mask,
            timestep=(t * FLOW_TIMESTEPS).float() * self.timestep_scale,  # float32, as the pipeline
            return_dict=False,
        )[0]
