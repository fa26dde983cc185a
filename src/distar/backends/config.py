"""The ``model`` section of a training config: which diffusers model, how to build g_θ, s_ref and s_ψ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distar.config import ConfigError, field

#: Built-in tiny random models for offline trials: ``pretrained: tiny:<name>`` (see backends/tiny.py).
TINY_MODELS: dict[str, dict[str, object]] = {
    "sd": dict(family="sd", prediction_type="epsilon"),
    "sd-v": dict(family="sd", prediction_type="v_prediction"),
    "sd-pixel": dict(family="sd", prediction_type="epsilon", latent=False),
    "sdxl": dict(family="sdxl", prediction_type="epsilon"),
    "sdxl-v": dict(family="sdxl", prediction_type="v_prediction"),
}

#: LoRA targets: attention projections, feed-forwards and resnet convolutions of a diffusers UNet.
DEFAULT_LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
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
    """A diffusers UNet2DConditionModel backbone (SD 1.5/2.x or SDXL) and the three DI* models on it."""

    family: Literal["sd", "sdxl"] = field(
        "sd", help="'sd' (SD 1.5/2.x: one CLIP text encoder) or 'sdxl' (two encoders, pooled embeds, time ids)."
    )
    pretrained: str = field(
        "tiny:sd",
        help="Reference model: hub id or local diffusers folder (unet/, vae/, text_encoder/, tokenizer/, "
        "scheduler/; no vae/ = pixel space), or a tiny random model: tiny:sd, tiny:sd-v, tiny:sd-pixel, "
        "tiny:sdxl, tiny:sdxl-v.",
    )
    revision: str | None = field(None, help="Hub revision (branch, tag or commit) of `pretrained`.")
    variant: str | None = field(None, help="Weight file variant of `pretrained`, e.g. 'fp16'.")
    generator_init: str | None = field(
        None,
        help="One-step UNet to initialise the generator from instead of the reference: a local diffusers "
        "UNet folder (or pipeline folder with unet/), a local state-dict file (.safetensors, .bin, .pt), or a "
        "hub file 'owner/repo/file' (e.g. tianweiy/DMD2/dmd2_sdxl_1step_unet_fp16.bin).",
    )
    t_init: int = field(399, help="Conditioning timestep at which the generator UNet is evaluated on z.")
    resolution: int | None = field(
        None, help="Image side in pixels; null = the UNet's sample_size times the VAE's downscale factor."
    )
    prediction_type: Literal["epsilon", "v_prediction", "sample"] | None = field(
        None, help="Override the scheduler config's prediction type (null = use it)."
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
        if self.t_init < 0:
            raise ConfigError(f"model.t_init: must be >= 0, got {self.t_init}")
        for name in ("generator_lora_rank", "assistant_lora_rank"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name}: must be >= 0, got {getattr(self, name)}")
        if self.resolution is not None and self.resolution <= 0:
            raise ConfigError(f"model.resolution: must be positive, got {self.resolution}")
