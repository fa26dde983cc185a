"""The published architectures of the real models, as config dicts, and folders of them without weights.

Each :class:`Architecture` holds the component configs of a released pipeline (``unet/`` or
``transformer/``, ``vae/``, ``text_encoder*/``, ``scheduler/``) as its hub repository publishes them.
:func:`write_architecture` writes them as a pipeline folder without weights; ``model.random_weights:
true`` builds that folder's models with random weights, so the real architectures run (memory
estimates on fake tensors, GPU checks) without downloading anything.
:func:`write_pickscore_architecture` does the same for PickScore (a reward's ``random_weights: true``).
The tokenizers are the character-level stand-ins of :mod:`distar.testing.tokenizers`, which give the
real sequence lengths: 77 CLIP tokens, T5 padded to ``max_sequence_length``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import transformers

from distar.io import random_model
from distar.rewards.convert import OPEN_CLIP_VIT_H_14, clip_config_from_open_clip
from distar.testing.reward_models import save_preprocessor_config
from distar.testing.tokenizers import TINY_CLIP_VOCAB_SIZE, save_tiny_clip_tokenizer, save_tiny_t5_tokenizer

#: openai/clip-vit-large-patch14's text tower: SD 1.5's text encoder, SDXL's first, SD3's and FLUX's CLIP.
CLIP_L: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    hidden_act="quick_gelu", projection_dim=768,
)
#: OpenCLIP ViT-bigG/14's text tower: SDXL's second text encoder, SD3's CLIP-G.
CLIP_BIGG: dict[str, Any] = dict(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    hidden_act="gelu", projection_dim=1280,
)
#: google/t5-v1_1-xxl's encoder: SD3's and FLUX's T5.
T5_XXL: dict[str, Any] = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False,
)

#: stable-diffusion-v1-5/stable-diffusion-v1-5: unet/config.json.
SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
#: stabilityai/stable-diffusion-xl-base-1.0: unet/config.json.
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
#: stabilityai/stable-diffusion-3.5-medium: transformer/config.json (MMDiT-X: dual attention in blocks 0-12).
SD35M_TRANSFORMER: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
#: black-forest-labs/FLUX.1-dev: transformer/config.json.
FLUX_DEV_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

#: The four-level KL VAE shared by SD 1.5, SDXL (scaling 0.13025), SD3 and FLUX (16 latent channels).
_VAE: dict[str, Any] = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
)
SD15_VAE: dict[str, Any] = dict(_VAE, sample_size=512, scaling_factor=0.18215)
SDXL_VAE: dict[str, Any] = dict(_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
_FLOW_VAE: dict[str, Any] = dict(
    _VAE, sample_size=1024, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False
)
SD3_VAE: dict[str, Any] = dict(_FLOW_VAE, scaling_factor=1.5305, shift_factor=0.0609)
FLUX_VAE: dict[str, Any] = dict(_FLOW_VAE, scaling_factor=0.3611, shift_factor=0.1159)

#: SD's discrete schedule (SD 1.5 and SDXL): scaled-linear betas over 1000 steps.
SD_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, timestep_spacing="leading",
)


@dataclass(frozen=True)
class Architecture:
    """A text-to-image pipeline's component classes and configs.

    ``components`` maps each folder (``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ...) to
    ``(library, class name, config)``; a tokenizer's config is its ``model_max_length``.
    """

    family: str
    pipeline: str
    resolution: int
    components: dict[str, tuple[str, str, Any]] = field(default_factory=dict)


def _clip(cls: str, arch: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A CLIP text encoder on the character-level tokenizer's start and end ids."""
    eos = TINY_CLIP_VOCAB_SIZE - 1
    ids = dict(bos_token_id=eos - 1, eos_token_id=eos, pad_token_id=eos)
    return ("transformers", cls, dict(vocab_size=49408, max_position_embeddings=77, **ids, **arch))


_CLIP_TOKENIZER = ("transformers", "CLIPTokenizer", 77)
_T5_TOKENIZER = ("transformers", "T5TokenizerFast", 512)

#: The architectures by name (``bench/memory_estimate.py --family``).
ARCHITECTURES: dict[str, Architecture] = {
    "sd15": Architecture("sd", "StableDiffusionPipeline", 512, {
        "unet": ("diffusers", "UNet2DConditionModel", SD15_UNET),
        "vae": ("diffusers", "AutoencoderKL", SD15_VAE),
        "text_encoder": _clip("CLIPTextModel", CLIP_L),
        "tokenizer": _CLIP_TOKENIZER,
        "scheduler": ("diffusers", "PNDMScheduler", dict(SD_SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False)),
    }),
    "sdxl": Architecture("sdxl", "StableDiffusionXLPipeline", 1024, {
        "unet": ("diffusers", "UNet2DConditionModel", SDXL_UNET),
        "vae": ("diffusers", "AutoencoderKL", SDXL_VAE),
        "text_encoder": _clip("CLIPTextModel", CLIP_L),
        "text_encoder_2": _clip("CLIPTextModelWithProjection", CLIP_BIGG),
        "tokenizer": _CLIP_TOKENIZER,
        "tokenizer_2": _CLIP_TOKENIZER,
        "scheduler": ("diffusers", "EulerDiscreteScheduler", SD_SCHEDULER),
    }),
    "sd35m": Architecture("sd3", "StableDiffusion3Pipeline", 1024, {
        "transformer": ("diffusers", "SD3Transformer2DModel", SD35M_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKL", SD3_VAE),
        "text_encoder": _clip("CLIPTextModelWithProjection", CLIP_L),
        "text_encoder_2": _clip("CLIPTextModelWithProjection", CLIP_BIGG),
        "text_encoder_3": ("transformers", "T5EncoderModel", T5_XXL),
        "tokenizer": _CLIP_TOKENIZER,
        "tokenizer_2": _CLIP_TOKENIZER,
        "tokenizer_3": _T5_TOKENIZER,
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0)),
    }),
    "flux-dev": Architecture("flux", "FluxPipeline", 1024, {
        "transformer": ("diffusers", "FluxTransformer2DModel", FLUX_DEV_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKL", FLUX_VAE),
        "text_encoder": _clip("CLIPTextModel", CLIP_L),
        "text_encoder_2": ("transformers", "T5EncoderModel", T5_XXL),
        "tokenizer": _CLIP_TOKENIZER,
        "tokenizer_2": _T5_TOKENIZER,
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", dict(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )),
    }),
}


#: Hub ids of the published models whose architectures :data:`ARCHITECTURES` holds (``distar plan``).
HUB_ARCHITECTURES: dict[str, str] = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "stabilityai/stable-diffusion-3.5-medium": "sd35m",
    "black-forest-labs/FLUX.1-dev": "flux-dev",
}


def component_class(name: str, part: str) -> Any:
    """The diffusers or transformers class of ``ARCHITECTURES[name]``'s component ``part``."""
    library, cls, _ = ARCHITECTURES[name].components[part]
    return getattr(diffusers if library == "diffusers" else transformers, cls)


def random_component(folder: str | Path, name: str, part: str) -> Any:
    """Component ``part`` of the architecture ``name`` written to ``folder``, with random weights."""
    return random_model(component_class(name, part), folder, subfolder=part)


def write_architecture(folder: str | Path, name: str) -> Path:
    """Write :data:`ARCHITECTURES` ``[name]`` as a diffusers pipeline folder of configs and tokenizers
    (no weights) and return it: ``model.pretrained`` for ``model.random_weights: true``."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{name}' (choose from {', '.join(ARCHITECTURES)})")
    arch, folder = ARCHITECTURES[name], Path(folder)
    index: dict[str, Any] = {"_class_name": arch.pipeline}
    for part, (library, cls, config) in arch.components.items():
        target, kind = folder / part, component_class(name, part)
        index[part] = [library, cls]
        if cls == "CLIPTokenizer":
            save_tiny_clip_tokenizer(target, model_max_length=config)
        elif cls == "T5TokenizerFast":
            save_tiny_t5_tokenizer(target, model_max_length=config)
        elif library == "transformers":
            kind.config_class(**config).save_pretrained(target)
        elif part == "scheduler":
            kind(**config).save_config(target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / "config.json").write_text(json.dumps({"_class_name": cls, **config}, indent=1))
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def write_pickscore_architecture(folder: str | Path) -> Path:
    """Write PickScore's architecture (CLIP ViT-H/14 at 224 px, 986 M parameters) as a ``CLIPModel``
    folder of config, character-level tokenizer and image-processor config, without weights, and
    return it: a reward ``path`` for ``random_weights: true``."""
    folder = Path(folder)
    config = clip_config_from_open_clip(OPEN_CLIP_VIT_H_14)
    eos = TINY_CLIP_VOCAB_SIZE - 1
    config.text_config.update(dict(bos_token_id=eos - 1, eos_token_id=eos, pad_token_id=eos))
    config.save_pretrained(folder)
    save_tiny_clip_tokenizer(folder)
    save_preprocessor_config(folder, size=OPEN_CLIP_VIT_H_14["vision_cfg"]["image_size"])
    return folder
