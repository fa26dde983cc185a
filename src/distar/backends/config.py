"""The ``model`` section of a training config: which diffusers model, how to build g_θ, s_ref and s_ψ."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distar.config import ConfigError, field

#: Built-in tiny random models for offline trials: ``pretrained: tiny:<name>``, the settings of
#: :func:`distar.testing.pipelines.save_tiny_pipeline`.
TINY_MODELS: dict[str, dict[str, object]] = {
    "sd": dict(family="sd", prediction_type="epsilon"),
    "sd-v": dict(family="sd", prediction_type="v_prediction"),
    "sd-pixel": dict(family="sd", prediction_type="epsilon", latent=False),
    "sdxl": dict(family="sdxl", prediction_type="epsilon"),
    "sdxl-v": dict(family="sdxl", prediction_type="v_prediction"),
    "sd3": dict(family="sd3"),
    "sd3-no-t5": dict(family="sd3", t5=False),
    "flux": dict(family="flux"),
    "sana": dict(family="sana"),
}

#: Sanity bounds, checked before any model is built: past them a typo allocates absurdly.
MAX_RESOLUTION = 4096
MAX_LORA_RANK = 1024

#: Families whose denoiser is a flow-matching transformer (velocity prediction, t = σ ∈ (0, 1]).
FLOW_FAMILIES = ("sd3", "flux", "sana")
#: Number of timesteps a flow transformer's time input is scaled to (fed 1000·σ).
FLOW_TIMESTEPS = 1000
#: The text-token count each flow family's pipeline uses by default (``max_sequence_length``).
DEFAULT_SEQUENCE_LENGTHS = {"sd3": 256, "flux": 512, "sana": 300}

#: LoRA targets: attention projections, feed-forwards and resnet convolutions of a diffusers UNet, and
#: the text-stream attention projections of an MMDiT (SD3).
DEFAULT_LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
]


@dataclass
class ModelConfig:
    """A diffusers backbone (SD 1.5/2.x or SDXL UNet, SD3/SD3.5, FLUX.1 or SANA transformer) and the three
    DI* models on it."""

    family: Literal["sd", "sdxl", "sd3", "flux", "sana"] = field(
        "sd",
        help="'sd' (SD 1.5/2.x: one CLIP text encoder), 'sdxl' (two encoders, pooled embeds, time ids), "
        "'sd3' (SD3/SD3.5 flow-matching transformer: CLIP-L, CLIP-G, optional T5, pooled projections), "
        "'flux' (FLUX.1: T5 tokens, CLIP pooled, packed latents, guidance embedding) or 'sana' (SANA: "
        "linear-attention flow transformer, Gemma-2 tokens with an attention mask, DC-AE).",
    )
    pretrained: str = field(
        "tiny:sd",
        help="Reference model: hub id or local diffusers folder (unet/, vae/, text_encoder/, tokenizer/, "
        "scheduler/; no vae/ = pixel space; transformer/ for sd3, flux and sana), or a tiny random model: tiny:sd, "
        "tiny:sd-v, tiny:sd-pixel, tiny:sdxl, tiny:sdxl-v, tiny:sd3, tiny:sd3-no-t5, tiny:flux, tiny:sana.",
    )
    random_weights: bool = field(
        False,
        help="Build the architecture that `pretrained` describes with random weights: only configs and "
        "tokenizers are read (memory estimates and checks of the real architectures without downloads; "
        "distar.testing.architectures writes such folders). generator_init, if set, still loads its weights.",
    )
    revision: str | None = field(None, help="Hub revision (branch, tag or commit) of `pretrained`.")
    variant: str | None = field(None, help="Weight file variant of `pretrained`, e.g. 'fp16'.")
    generator_init: str | None = field(
        None,
        help="One-step UNet to initialise the generator from instead of the reference: a local diffusers "
        "UNet folder (or pipeline folder with unet/), a local state-dict file (.safetensors, .bin, .pt), or a "
        "hub file 'owner/repo/file' (e.g. tianweiy/DMD2/dmd2_sdxl_1step_unet_fp16.bin).",
    )
    t_init: int | None = field(
        None,
        help="Conditioning timestep at which the generator is evaluated on z (null = 399 for UNets; 1000, "
        "i.e. σ = 1, for flow transformers, which are fed σ = t_init/1000); with several steps, the first "
        "of `timesteps`.",
    )
    steps: int = field(
        1,
        help="Generator steps k (DMD2's multi-step scheme): g_θ is applied at each of `timesteps` in turn, "
        "its x0 re-noised to the next one; training draws one step per update and builds its input by "
        "running the generator's own earlier steps (backward simulation).",
    )
    timesteps: list[int] | None = field(
        None,
        help="The k generator timesteps, decreasing, in t_init's units (null = [t_init] for one step, else "
        "evenly spaced from the top: UNets 999, 749, 499, 249; flow 1000, 750, 500, 250 for k = 4).",
    )
    resolution: int | None = field(
        None, help="Image side in pixels; null = the UNet's sample_size times the VAE's downscale factor."
    )
    prediction_type: Literal["epsilon", "v_prediction", "sample"] | None = field(
        None, help="Override the scheduler config's prediction type (null = use it; UNet families only)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        "float32",
        help="Dtype of frozen weights (reference UNet, VAE, text encoders, LoRA base weights); trainable "
        "weights stay float32.",
    )
    gradient_checkpointing: bool = field(False, help="Recompute UNet/VAE activations in backward to save memory.")
    generator_lora_rank: int = field(0, help="LoRA rank of the generator (0 = train all its weights).")
    assistant_lora_rank: int = field(0, help="LoRA rank of the assistant (0 = a full trainable copy).")
    assistant_lora_shared: bool = field(
        True,
        help="With assistant LoRA: put the adapter on the reference's own frozen UNet (adapter off = "
        "reference, on = assistant), so one set of UNet weights serves both.",
    )
    lora_alpha: float | None = field(None, help="LoRA alpha (null = the rank, i.e. scale 1).")
    lora_target_modules: list[str] = field(
        DEFAULT_LORA_TARGETS, help="Module name suffixes that receive LoRA adapters."
    )
    compile: bool = field(False, help="torch.compile the generator, assistant and reference UNets (in place).")
    offload_text_encoders: bool = field(
        False, help="Keep text encoders on the CPU, moving them to the device only while encoding prompts."
    )
    t5: bool = field(
        True,
        help="sd3: load the T5 text encoder (false: zeros in its place, as diffusers' SD3 pipeline without "
        "text_encoder_3; saves ~9 GB).",
    )
    max_sequence_length: int | None = field(
        None,
        help="sd3, flux: T5 prompt tokens; sana: Gemma tokens (null = the diffusers pipeline's default: sd3 256, "
        "flux 512, sana 300).",
    )
    guidance: float = field(
        3.5,
        help="flux with a guidance embedding (FLUX.1-dev): the guidance input of all three transformers, i.e. "
        "the reference's built-in ('inner') CFG; the pipeline's guidance_scale.",
    )

    prompt_cache_size: int = field(
        256,
        help="Distinct prompts whose text conditioning is kept on the device (least recently used dropped "
        "first; SDXL in float32 ≈ 0.6 MB each); 0 = encode every batch.",
    )

    def __post_init__(self) -> None:
        if not self.pretrained:
            raise ConfigError("model.pretrained: must name a model")
        if self.pretrained.startswith("tiny:"):
            name = self.pretrained[5:]
            if name not in TINY_MODELS:
                choices = ", ".join(TINY_MODELS)
                raise ConfigError(f"model.pretrained: unknown tiny model '{name}' (choose from {choices})")
            if TINY_MODELS[name]["family"] != self.family:
                raise ConfigError(f"model.family: '{self.family}' does not match pretrained '{self.pretrained}'")
        if not 1 <= self.steps <= 16:
            raise ConfigError(f"model.steps: must be in 1..16, got {self.steps}")
        if self.timesteps is None and self.steps > 1:
            top = FLOW_TIMESTEPS if self.flow else 999
            self.timesteps = [top - i * (1000 // self.steps) for i in range(self.steps)]
        if self.timesteps is not None:
            if len(self.timesteps) != self.steps:
                raise ConfigError(f"model.timesteps: {len(self.timesteps)} given for model.steps = {self.steps}")
            if any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
                raise ConfigError(f"model.timesteps: must be strictly decreasing, got {self.timesteps}")
            if self.t_init not in (None, self.timesteps[0]):
                raise ConfigError(f"model.t_init: {self.t_init} is not the first of model.timesteps {self.timesteps}")
            self.t_init = self.timesteps[0]
        if self.t_init is None:
            self.t_init = FLOW_TIMESTEPS if self.flow else 399
        for t in self.generator_timesteps:
            if t < 0:
                raise ConfigError(f"model.t_init: must be >= 0, got {t}")
            if self.flow and not 0 < t <= FLOW_TIMESTEPS:
                raise ConfigError(f"model.t_init: flow models take 1..{FLOW_TIMESTEPS} (σ = t_init/1000), got {t}")
        if self.flow and self.prediction_type is not None:
            raise ConfigError(f"model.prediction_type: family '{self.family}' predicts the flow velocity; leave it null")
        if self.max_sequence_length is None:
            self.max_sequence_length = DEFAULT_SEQUENCE_LENGTHS.get(self.family, 256)
        if not 0 < self.max_sequence_length <= 512:
            raise ConfigError(f"model.max_sequence_length: must be in 1..512, got {self.max_sequence_length}")
        if self.guidance < 0:
            raise ConfigError(f"model.guidance: must be >= 0, got {self.guidance}")
        for name in ("generator_lora_rank", "assistant_lora_rank"):
            if not 0 <= getattr(self, name) <= MAX_LORA_RANK:
                raise ConfigError(f"model.{name}: must be in 0..{MAX_LORA_RANK}, got {str(getattr(self, name))[:30]}")
        if self.lora_alpha is not None and not 0 < self.lora_alpha < math.inf:
            raise ConfigError(f"model.lora_alpha: must be finite and > 0 (or null), got {self.lora_alpha}")
        if not self.lora_target_modules or not all(m.strip() for m in self.lora_target_modules):
            raise ConfigError("model.lora_target_modules: must name at least one module (no empty names)")
        if self.prompt_cache_size < 0:
            raise ConfigError(f"model.prompt_cache_size: must be >= 0, got {self.prompt_cache_size}")
        init = Path(self.generator_init) if self.generator_init else None
        if init is not None and (init.is_absolute() or self.generator_init.startswith(".")) and not init.exists():
            raise ConfigError(f"model.generator_init: no such file or folder: {self.generator_init}")
        if init is not None and init.exists() and not (init.is_file() or init.is_dir()):
            raise ConfigError(f"model.generator_init: {self.generator_init} is not a regular file or a folder")
        model_folders = ("", "unet", "transformer")
        if init is not None and init.is_dir() and not any((init / sub / "config.json").is_file() for sub in model_folders):
            raise ConfigError(
                f"model.generator_init: {self.generator_init} holds no diffusers model (config.json, unet/ or transformer/)"
            )
        if self.resolution is not None and not 0 < self.resolution <= MAX_RESOLUTION:
            raise ConfigError(f"model.resolution: must be in 1..{MAX_RESOLUTION}, got {str(self.resolution)[:30]}")

    @property
    def generator_timesteps(self) -> list[int]:
        """The timesteps the generator is applied at: ``timesteps``, or ``[t_init]`` for one step."""
        return list(self.timesteps) if self.timesteps is not None else [int(self.t_init or 0)]

    @property
    def flow(self) -> bool:
        """Whether the family is a flow-matching transformer (:data:`FLOW_FAMILIES`)."""
        return self.family in FLOW_FAMILIES
