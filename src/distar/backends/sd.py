"""Stable Diffusion 1.5/2.x (and pixel-space SD-style) UNets as a DI* :class:`~distar.protocols.Backend`.

Legend (docs/math.md §0): ``z`` generator noise, ``x0`` clean latents (or pixels in [-1, 1]),
``x_t = α_t x0 + σ_t ε`` (2.1), ``t`` integer timesteps of the reference's 1000-step schedule.
Every UNet output is converted to an x0-prediction with the backbone's prediction type (§1).
"""

from __future__ import annotations

from collections import OrderedDict
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
from distar.diffusion import DiscreteSchedule, PredictionType, Schedule, expand_like, to_x0
from distar.protocols import FewStepSampling, NoiseGenerators


@dataclass(frozen=True)
class TextConditioning:
    """Prompt conditioning: per-token text embeddings, (SDXL, SD3, FLUX) the pooled text embedding and
    (SANA) the tokens' attention mask."""

    embeds: Tensor  # (B, L, D)
    pooled: Tensor | None = None  # (B, P), SDXL, SD3 and FLUX
    mask: Tensor | None = None  # (B, L), 1 = token, 0 = padding; SANA

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @classmethod
    def stack(cls, rows: Sequence["TextConditioning"]) -> "TextConditioning":
        """Batch-1 conditionings joined into one batch, in order."""
        columns = zip(*(row._values() for row in rows))
        return cls(*(None if column[0] is None else torch.cat(column) for column in columns))

    def repeat(self, batch_size: int) -> "TextConditioning":
        """A batch-1 conditioning (e.g. the empty prompt) repeated ``batch_size`` times."""
        return TextConditioning(*(None if v is None else v.expand(batch_size, *v.shape[1:]) for v in self._values()))

    def cat(self, other: "TextConditioning") -> "TextConditioning":
        """Concatenate along the batch dimension (for one batched cond + uncond forward)."""
        return TextConditioning(
            *(None if a is None else torch.cat([a, b]) for a, b in zip(self._values(), other._values()))
        )

    def _values(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        return self.embeds, self.pooled, self.mask


class StableDiffusionBackend(FewStepSampling):
    """Generator g_θ, reference s_ref and assistant s_ψ on one SD UNet architecture.

    ``pipe`` holds the frozen text encoders, tokenizers, VAE (None in pixel space) and scheduler.
    ``reference`` is a separate frozen UNet, or None in the shared-LoRA layout where the reference is
    ``assistant`` with its adapters disabled. ``generator``/``assistant`` may be replaced by wrapped
    (DDP/FSDP) modules; calls go through these attributes. Each UNet's dtype is looked up on its first
    call and kept (weights are not cast once training runs).

    Prompts are encoded one at a time and the last ``prompt_cache_size`` distinct ones are kept on the
    device (least recently used dropped first; 0 keeps none): a fixed prompt set is encoded once, and a
    prompt's conditioning never depends on the batch it came in or on what the cache held, so an
    exact resume with an empty cache reproduces it.
    """

    def __init__(
        self,
        pipe: TextToImagePipeline,
        generator: nn.Module,
        assistant: nn.Module,
        reference: nn.Module | None,
        *,
        t_init: int = 399,
        timesteps: Sequence[int] | None = None,
        prediction_type: PredictionType = "epsilon",
        resolution: int | None = None,
        device: torch.device | str = "cpu",
        offload_text_encoders: bool = False,
        offload_device: torch.device | str = "cpu",
        prompt_cache_size: int = 256,
    ) -> None:
        self.pipe = pipe
        self.generator = generator
        self.assistant = assistant
        self.reference = reference
        self.prediction_type = prediction_type
        self.device = torch.device(device)
        self.offload_text_encoders = offload_text_encoders
        self.offload_device = torch.device(offload_device)
        unet_config = extract_model_from_parallel(assistant).config  # a UNet's or a transformer's
        self.vae_scale_factor = pipe.vae_scale_factor if pipe.vae is not None else 1
        self.resolution = resolution or self._default_resolution(unet_config)
        if self.resolution % self.vae_scale_factor:
            raise ConfigError(f"model.resolution: {self.resolution} is not a multiple of {self.vae_scale_factor}")
        self.latent_shape = self._latent_shape(unet_config)
        self.schedule = self._make_schedule(pipe.scheduler)
        self.timesteps = list(timesteps) if timesteps is not None else [t_init]
        self.t_init = self.timesteps[0]
        self.generator_times = [self._generator_time(t) for t in self.timesteps]
        self._generator_params = [p for p in generator.parameters() if p.requires_grad]
        self._assistant_params = [p for p in assistant.parameters() if p.requires_grad]
        self._uncond: TextConditioning | None = None
        self.prompt_cache_size = prompt_cache_size
        self._prompt_cache: OrderedDict[str, TextConditioning] = OrderedDict()
        self._dtypes: dict[nn.Module, torch.dtype] = {}

    # -- prompts -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> TextConditioning:
        """Text conditioning for a batch of prompts, each encoded as the diffusers pipeline encodes it
        (alone; cached, see the class)."""
        cache, distinct = self._prompt_cache, list(dict.fromkeys(prompts))
        fresh: dict[str, TextConditioning] = {}
        if any(p not in cache for p in distinct):
            with self._text_encoders_on_device():
                fresh = {p: self._encode([p]) for p in distinct if p not in cache}
        rows = [fresh[p] if p in fresh else cache[p] for p in prompts]
        for p in distinct:  # most recently used last
            if p in fresh:
                cache[p] = fresh[p]
            else:
                cache.move_to_end(p)
        while len(cache) > self.prompt_cache_size:
            cache.popitem(last=False)
        return TextConditioning.stack(rows)

    @property
    @torch.no_grad()
    def uncond(self) -> TextConditioning:
        """The empty-prompt (∅) conditioning, batch 1, encoded once and cached."""
        if self._uncond is None:
            with self._text_encoders_on_device():
                self._uncond = self._encode_uncond()
        return self._uncond

    def _default_resolution(self, denoiser_config: Any) -> int:
        return denoiser_config.sample_size * self.vae_scale_factor

    def _latent_shape(self, denoiser_config: Any) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale_factor
        return (denoiser_config.in_channels, side, side)

    def _make_schedule(self, scheduler: Any) -> Schedule:
        """ᾱ read from the scheduler's own ``alphas_cumprod`` table (zero-terminal-SNR configs included)."""
        schedule = DiscreteSchedule.from_scheduler(scheduler)
        if schedule.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ConfigError("model.prediction_type: a zero-terminal-SNR scheduler needs v_prediction or sample, not epsilon")
        return schedule

    def _generator_time(self, t_init: int) -> float:
        """The schedule time of a generator timestep: the timestep itself for UNets."""
        last = self.schedule.num_train_timesteps - 1
        if not 0 <= t_init <= last:
            raise ConfigError(f"model.t_init: {t_init} is outside the schedule's 0..{last}")
        return t_init

    def _encode(self, prompts: list[str]) -> TextConditioning:
        embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return TextConditioning(embeds)

    def _encode_uncond(self) -> TextConditioning:
        return self._encode([""])

    def _text_encoders_on_device(self) -> ContextManager[Any]:
        encoders = [m for name, m in self.pipe.components.items() if name.startswith("text_encoder") and m is not None]
        return _moved_to(encoders, self.device, self.offload_device) if self.offload_text_encoders else nullcontext()

    # -- the three x0-predictions -----------------------------------------------------------------
    def sample_latents(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I) of shape (B, C, h, w), drawn like the diffusers pipelines draw their latents."""
        return randn_tensor((batch_size, *self.latent_shape), generator=generator, device=self.device)

    @property
    def num_steps(self) -> int:
        """k, the number of generator steps."""
        return len(self.timesteps)

    def generate(self, z: Tensor, cond: TextConditioning, step: int = 0) -> Tensor:
        """x0 = g_θ(x, c): the generator network fed x at ``timesteps[step]`` (t_init for the first,
        where x = z), its output read as x̂0 (§2)."""
        t = torch.full((z.shape[0],), self.generator_times[step], device=z.device)
        return self._x0(self.generator, z, t, cond)

    def renoise(self, x0: Tensor, step: int, generator: NoiseGenerators = None) -> Tensor:
        """x_t = α_t x0 + σ_t ε (2.1) at ``timesteps[step]`` with fresh ε (from ``generator``, one per
        sample for a list, else torch's global RNG): the next step's input in DMD2's multi-step scheme,
        drawn as the pipeline's LCM / stochastic flow sampling draws it with the same ``generator``."""
        noise = self._noise_like(x0, generator)
        t = torch.full((x0.shape[0],), self.generator_times[step], device=x0.device)
        return self.schedule.add_noise(x0, noise, t)

    def reference_x0(self, x_t: Tensor, t: Tensor, cond: TextConditioning) -> Tensor:
        """x̂0_ref(x_t | c), frozen weights, graph kept through x_t."""
        with self._reference_mode() as denoiser:
            return self._x0(denoiser, x_t, t, cond)

    def reference_x0_cond_uncond(self, x_t: Tensor, t: Tensor, cond: TextConditioning) -> tuple[Tensor, Tensor]:
        """(x̂0_ref(x_t | c), x̂0_ref(x_t | ∅)) from one batched forward, for CFG (3.5)."""
        both = cond.cat(self.uncond.repeat(len(cond)))
        with self._reference_mode() as denoiser:
            x0 = self._x0(denoiser, torch.cat([x_t, x_t]), torch.cat([t, t]), both)
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
            else:  # SD3's VAE also shifts its latents
                latents = x0 / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
            images = vae.decode(latents.to(vae.dtype), return_dict=False)[0].to(x0.dtype)
        return ((images + 1) / 2).clamp(0, 1)

    def generator_parameters(self) -> Iterable[nn.Parameter]:
        """The generator's trainable weights (all of them, or its LoRA adapter)."""
        return self._generator_params

    def assistant_parameters(self) -> Iterable[nn.Parameter]:
        """The assistant's trainable weights (all of them, or its LoRA adapter)."""
        return self._assistant_params

    # -- internals ----------------------------------------------------------------------------------
    def _noise_like(self, x0: Tensor, generator: NoiseGenerators) -> Tensor:
        """ε ~ N(0, I) shaped like ``x0``, drawn as the pipeline's scheduler draws it."""
        return randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    @contextmanager
    def _reference_mode(self) -> Iterator[nn.Module]:
        """The reference UNet to call: the separate frozen one, or the shared one with adapters off."""
        if self.reference is not None:
            yield self.reference
            return
        denoiser = extract_model_from_parallel(self.assistant)
        with adapters_disabled(denoiser):
            yield denoiser

    def _denoiser_kwargs(self, cond: TextConditioning, dtype: torch.dtype) -> dict[str, Any]:
        return {"encoder_hidden_states": cond.embeds.to(dtype)}

    def _forward(self, denoiser: nn.Module, x_t: Tensor, t: Tensor, cond: TextConditioning, dtype: torch.dtype) -> Tensor:
        """The network's raw output on ``x_t`` (already in ``dtype``) at schedule times ``t``."""
        return denoiser(x_t, t, return_dict=False, **self._denoiser_kwargs(cond, dtype))[0]

    def _x0(self, denoiser: nn.Module, x_t: Tensor, t: Tensor, cond: TextConditioning) -> Tensor:
        """Evaluate ``denoiser`` in its own dtype and convert its output to x̂0 in ``x_t``'s dtype (§1)."""
        dtype = self._dtypes.get(denoiser)
        if dtype is None:
            dtype = self._dtypes[denoiser] = extract_model_from_parallel(denoiser).dtype
        out = self._forward(denoiser, x_t.to(dtype), t, cond, dtype)
        alpha_t = expand_like(self.schedule.alpha(t), x_t).to(x_t.dtype)
        sigma_t = expand_like(self.schedule.sigma(t), x_t).to(x_t.dtype)
        return to_x0(out.to(x_t.dtype), x_t, alpha_t, sigma_t, self.prediction_type)


@contextmanager
def _moved_to(modules: list[nn.Module], device: torch.device, home: torch.device) -> Iterator[None]:
    """Move modules to ``device`` for the block and back ``home`` after (text-encoder offload)."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to(home)
