"""A pixel-space diffusion model as an image model: a multi-step sampler with classifier-free guidance.

A pixel reference folder holds ``unet/`` (a diffusers ``UNet2DConditionModel`` on [−1, 1] images),
``text_encoder/`` and ``tokenizer/`` (CLIP), and no VAE, so decode = (x + 1)/2. Its forward process is
:data:`SCHEDULER_CONFIG`; :class:`ReferenceSampler` samples it with DPM-Solver++(2M) or DDIM
(the shapes world's reference, ``distar serve`` and ``distar eval`` on such folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from distar.diffusion import cfg_combine
from distar.errors import Cancelled
from distar.rewards.hub import quiet_transformers

#: The forward process: DDPM's linear β schedule (1e-4 .. 0.02 over 1000 steps), v-prediction. With
#: ε-prediction a small pixel model's x̂0 = (x_t − σ_t ε̂)/α_t is ruined at large t (1/α_t ≈ 160 at
#: t = 999); v-prediction keeps x̂0 = α_t x_t − σ_t v̂ well conditioned there.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="v_prediction",
    clip_sample=False,
    steps_offset=1,
)


def encode_prompts(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompts: Sequence[str]) -> Tensor:
    """(B, L, D) text conditioning: ``last_hidden_state`` of prompts padded to ``model_max_length``."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def seeded_noise(seeds: Sequence[int], shape: Sequence[int]) -> Tensor:
    """(B, *shape) standard normal noise, image i drawn from its own ``seeds[i]``."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


#: Samplers of :class:`ReferenceSampler`: diffusers schedulers on the reference's training schedule.
SAMPLERS = ("dpm++", "ddim")


def sampler_scheduler(name: str, *, clip_sample: bool = False) -> DDIMScheduler | DPMSolverMultistepScheduler:
    """The scheduler called ``name``: ``"dpm++"`` = DPM-Solver++(2M) with Karras σ spacing down to σ = 0
    (steps concentrated where the image takes shape), ``"ddim"`` = DDIM (η = 0) at evenly spaced steps."""
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(SCHEDULER_CONFIG, use_karras_sigmas=True, final_sigmas_type="zero")
    if name == "ddim":
        return DDIMScheduler.from_config(dict(SCHEDULER_CONFIG, clip_sample=clip_sample, set_alpha_to_one=False))
    raise ValueError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")


class ReferenceSampler:
    """The reference as an :class:`~distar.protocols.ImageModel`: a multi-step sampler with classifier-free guidance.

    Each step evaluates the UNet on the conditional and the empty prompt in one batch and combines
    the two v-predictions by Eq. (3.5) with ``guidance_scale`` (the combination is linear, so it is
    the guided score's v-form). z comes from the per-image seed; both samplers are deterministic.

    ``clip_sample`` (DDIM only) clips the implied x̂0 to [−1, 1] as diffusers' DDIM does, which keeps ε̂
    from the unclipped prediction; under CFG the guided x̂0 overshoots dark backgrounds, the clipped steps
    are inconsistent and backgrounds drift to grey (docs/shapes.md measures it), so it is off by default.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        steps: int = 20,
        guidance_scale: float = 3.0,
        name: str | None = None,
        *,
        sampler: str = "dpm++",
        clip_sample: bool = False,
    ) -> None:
        # a sampler holds a frozen reference, whether trained in this process or loaded
        self.unet, self.text_encoder = unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = sampler_scheduler(sampler, clip_sample=clip_sample)
        self.steps, self.guidance_scale = steps, guidance_scale
        self.name = name or f"reference ({steps}-step {sampler}, CFG {guidance_scale:g})"

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> "ReferenceSampler":
        directory = Path(directory)
        with quiet_transformers():
            text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder")
        return cls(
            UNet2DConditionModel.from_pretrained(directory / "unet"),
            text_encoder,
            CLIPTokenizer.from_pretrained(directory / "tokenizer"),
            **kwargs,
        )

    @torch.no_grad()
    def generate_images(
        self, prompts: Sequence[str], seeds: Sequence[int], stop: Callable[[], bool] | None = None
    ) -> Tensor:
        """Images (B, 3, H, W) in [0, 1]; raises :class:`~distar.errors.Cancelled` at the first step at
        which ``stop()`` is true."""
        device = self.unet.device
        cond = encode_prompts(self.text_encoder, self.tokenizer, list(prompts) + [""] * len(prompts))
        size = self.unet.config.sample_size
        x = seeded_noise(seeds, (self.unet.config.in_channels, size, size)).to(device)
        self.scheduler.set_timesteps(self.steps)
        for t in self.scheduler.timesteps:
            if stop is not None and stop():
                raise Cancelled("sampling stopped")
            v_c, v_u = self.unet(torch.cat([x, x]), t, cond).sample.chunk(2)
            x = self.scheduler.step(cfg_combine(v_c, v_u, self.guidance_scale), t, x).prev_sample
        return ((x + 1) / 2).clamp(0, 1).cpu()
