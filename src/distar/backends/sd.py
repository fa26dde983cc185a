"""Stable Diffusion 1.5/2.x (and pixel-space SD-style) UNets as a DI* :class:`~distar.protocols.Backend`.

Legend (di-star-math.md): ``z`` generator noise, ``x0`` clean latents (or pixels in [-1, 1]),
``x_t = α_t x0 + σ_t ε`` (2.1), ``t`` integer timesteps of the reference's 1000-step schedule.
Every UNet output is converted to an x0-prediction with the backbone's prediction type (§1).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Iterable, Iterator, Sequence

import torch
from accelerate.utils import extract_model_from_parallel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from distar.backends.loading import TextToImagePipeline
from distar.backends.lora import adapters_disabled
from distar.config import ConfigError
from distar.diffusion import DiscreteSchedule, PredictionType, expand_like, to_x0


@dataclass(frozen=True)
class TextConditioning:
    """Prompt conditioning: per-token text embeddings and (SDXL) the pooled text embedding."""

    embeds: Tensor  # (B, L, D)
    pooled: Tensor | None = None  # (B, P), SDXL only

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def repeat(self, batch_size: int) -> "TextConditioning":
        """A batch-1 conditioning (e.g. the empty prompt) repeated ``batch_size`` times."""
        return TextConditioning(*(None if v is None else v.expand(batch_size, *v.shape[1:]) for v in self._values()))

    def cat(self, other: "TextConditioning") -> "TextConditioning":
        """Concatenate along the batch dimension (for one batched cond + uncond forward)."""
        return TextConditioning(
            *(None if a is None else torch.cat([a, b]) for a, b in zip(self._values(), other._values()))
        )

    def _values(self) -> tuple[Tensor, Tensor | None]:
        return self.embeds, self.pooled


class StableDiffusionBackend:
    """Generator g_θ, reference s_ref and assistant s_ψ on one SD UNet architecture.

    ``pipe`` holds the frozen text encoders, tokenizers, VAE (None in pixel space) and scheduler.
    ``reference`` is a separate frozen UNet, or None in the shared-LoRA layout where the reference is
    ``assistant`` with its adapters disabled. ``generator``/``assistant`` may be replaced by wrapped
    (DDP/FSDP) modules; calls go through these attributes.
    """

    def __init__(
        self,
        pipe: TextToImagePipeline,
        generator: nn.Module,
        assistant: nn.Module,
        reference: nn.Module | None,
        *,
        t_init: int = 399,
        prediction_type: PredictionType = "epsilon",
        resolution: int | None = None,
        device: torch.device | str = "cpu",
        offload_text_encoders: bool = False,
    ) -> None:
        self.pipe = pipe
        self.generator = generator
        self.assistant = assistant
        self.reference = reference
        self.schedule = DiscreteSchedule.from_scheduler(pipe.scheduler)
        if self.schedule.zero_terminal_snr and prediction_type == "epsilon":
            raise ConfigError("model.prediction_type: a zero-terminal-SNR scheduler needs v_prediction or sample, not epsilon")
        last = self.schedule.num_train_timesteps - 1
        if not 0 <= t_init <= last:
            raise ConfigError(f"model.t_init: {t_init} is outside the schedule's 0..{last}")
        self.t_init = t_init
        self.prediction_type = prediction_type
        self.device = torch.device(device)
        self.offload_text_encoders = offload_text_encoders
        unet_config = extract_model_from_parallel(assistant).config
        self.vae_scale_factor = pipe.vae_scale_factor if pipe.vae is not None else 1
        self.resolution = resolution or unet_config.sample_size * self.vae_scale_factor
        if self.resolution % self.vae_scale_factor:
            raise ConfigError(f"model.resolution: {self.resolution} is not a multiple of {self.vae_scale_factor}")
        side = self.resolution // self.vae_scale_factor
        self.latent_shape = (unet_config.in_channels, side, side)
        self._generator_params = [p for p in generator.parameters() if p.requires_grad]
        self._assistant_params = [p for p in assistant.parameters() if p.requires_grad]
        self._uncond: TextConditioning | None = None

    # -- prompts -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> TextConditioning:
        """Text conditioning for a batch of prompts, exactly as the diffusers pipeline encodes them."""
        with self._text_encoders_on_device():
            return self._encode(list(prompts))

    @property
    @torch.no_grad()
    def uncond(self) -> TextConditioning:
        """The empty-prompt (∅) conditioning, batch 1, encoded once and cached."""
        if self._uncond is None:
            with self._text_encoders_on_device():
                self._uncond = self._encode_uncond()
        return self._uncond

    def _encode(self, prompts: list[str]) -> TextConditioning:
        embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return TextConditioning(embeds)

    def _encode_uncond(self) -> TextConditioning:
        return self._encode([""])

    def _text_encoders_on_device(self) -> ContextManager[Any]:
        encoders = [m for name, m in self.pipe.components.items() if name.startswith("text_encoder") and m is not None]
        return _moved_to(encoders, self.device) if self.offload_text_encoders else nullcontext()

    # -- the three x0-predictions -----------------------------------------------------------------
    def sample_latents(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I) of shape (B, C, h, w), drawn like the diffusers pipelines draw their latents."""
        return randn_tensor((batch_size, *self.latent_shape), generator=generator, device=self.device)

    def generate(self, z: Tensor, cond: TextConditioning) -> Tensor:
        """x0 = g_θ(z, c): the generator UNet fed z at timestep t_init, its output read as x̂0 (§2)."""
        t = torch.full((z.shape[0],), self.t_init, device=z.device, dtype=torch.long)
        return self._x0(self.generator, z, t, cond)

    def reference_x0(self, x_t: Tensor, t: Tensor, cond: TextConditioning) -> Tensor:
        """x̂0_ref(x_t | c), frozen weights, graph kept through x_t."""
        with self._reference_mode() as unet:
            return self._x0(unet, x_t, t, cond)

    def reference_x0_cond_uncond(self, x_t: Tensor, t: Tensor, cond: TextConditioning) -> tuple[Tensor, Tensor]:
        """(x̂0_ref(x_t | c), x̂0_ref(x_t | ∅)) from one batched forward, for CFG (3.5)."""
        both = cond.cat(self.uncond.repeat(len(cond)))
        with self._reference_mode() as unet:
            x0 = self._x0(unet, torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        x0_cond, x0_uncond = x0.chunk(2)
        return x0_cond, x0_uncond

    def assistant_x0(self, x_t: Tensor, t: Tensor, cond: TextConditioning) -> Tensor:
        """x̂0_ψ(x_t | c)."""
        return self._x0(self.assistant, x_t, t, cond)

    def decode(self, x0: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1], differentiable: VAE decode (or (x + 1)/2 in pixel space), clamped."""
        vae = self.pipe.vae
        if vae is None:
            images = x0
        else:
            config = vae.config
            if getattr(config, "latents_mean", None) is not None:
                mean = torch.tensor(config.latents_mean, device=x0.device).view(1, -1, 1, 1)
                std = torch.tensor(config.latents_std, device=x0.device).view(1, -1, 1, 1)
                latents = x0 * std / config.scaling_factor + mean
            else:
                latents = x0 / config.scaling_factor
            images = vae.decode(latents.to(vae.dtype), return_dict=False)[0].to(x0.dtype)
        return ((images + 1) / 2).clamp(0, 1)

    def generator_parameters(self) -> Iterable[nn.Parameter]:
        """The generator's trainable weights (all of them, or its LoRA adapter)."""
        return self._generator_params

    def assistant_parameters(self) -> Iterable[nn.Parameter]:
        """The assistant's trainable weights (all of them, or its LoRA adapter)."""
        return self._assistant_params

    # -- internals ----------------------------------------------------------------------------------
    @contextmanager
    def _reference_mode(self) -> Iterator[nn.Module]:
        """The reference UNet to call: the separate frozen one, or the shared one with adapters off."""
        if self.reference is not None:
            yield self.reference
            return
        unet = extract_model_from_parallel(self.assistant)
        with adapters_disabled(unet):
            yield unet

    def _unet_kwargs(self, cond: TextConditioning, dtype: torch.dtype) -> dict[str, Any]:
        return {"encoder_hidden_states": cond.embeds.to(dtype)}

    def _x0(self, unet: nn.Module, x_t: Tensor, t: Tensor, cond: TextConditioning) -> Tensor:
        """Evaluate ``unet`` in its own dtype and convert its output to x̂0 in ``x_t``'s dtype (§1)."""
        dtype = extract_model_from_parallel(unet).dtype
        out = unet(x_t.to(dtype), t, return_dict=False, **self._unet_kwargs(cond, dtype))[0]
        alpha_t = expand_like(self.schedule.alpha(t), x_t).to(x_t.dtype)
        sigma_t = expand_like(self.schedule.sigma(t), x_t).to(x_t.dtype)
        return to_x0(out.to(x_t.dtype), x_t, alpha_t, sigma_t, self.prediction_type)


@contextmanager
def _moved_to(modules: list[nn.Module], device: torch.device) -> Iterator[None]:
    """Move modules to ``device`` for the block and back to the CPU after (text-encoder offload)."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")
