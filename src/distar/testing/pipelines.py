"""Tiny, randomly initialised Stable Diffusion / SDXL / SD3 / FLUX pipelines for tests and offline trials.

:func:`save_tiny_pipeline` writes a real diffusers pipeline folder (``model_index.json`` plus the
``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler`` subfolders; SDXL adds
``text_encoder_2``/``tokenizer_2``; SD3 has a ``transformer`` instead of the UNet, three text encoders
(CLIP-L, CLIP-G, T5) and a flow-matching scheduler; FLUX a transformer, CLIP and T5) that loads back with
``DiffusionPipeline.from_pretrained``. The networks are a few thousand parameters: latents are
4 × 8 × 8, images 3 × 16 × 16. The pixel-space variant (``latent=False``) has no VAE and a
3-channel UNet: the layout of pixel-space "sd" models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from distar.backends.config import TINY_MODELS
from distar.backends.loading import NO_SAFETY_CHECKER, PIPELINES
from distar.io import build_once, cache_dir
from distar.testing.tokenizers import (
    TINY_CLIP_VOCAB_SIZE,
    TINY_T5_VOCAB_SIZE,
    save_tiny_clip_tokenizer,
    save_tiny_t5_tokenizer,
)

Family = Literal["sd", "sdxl", "sd3", "flux"]

#: Latent (UNet sample) side length of the tiny models; images are twice as large (2-level VAE).
TINY_SAMPLE_SIZE = 8
#: Hidden size of each tiny text encoder (SDXL concatenates two: cross-attention dim 2×).
TINY_TEXT_DIM = 16
#: SDXL micro-conditioning embedding size per time id (6 ids: original size, crop, target size).
TINY_TIME_EMBED_DIM = 8

#: Width of the tiny T5 encoder, which is the SD3 transformer's joint attention dim.
TINY_T5_DIM = 32
#: Timestep shift of the tiny SD3 scheduler (SD3-medium's).
TINY_SD3_SHIFT = 3.0

_SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
)


def _text_config(**overrides: object) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=TINY_CLIP_VOCAB_SIZE,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=2 * TINY_TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=TINY_TEXT_DIM,
        bos_token_id=TINY_CLIP_VOCAB_SIZE - 2,
        eos_token_id=TINY_CLIP_VOCAB_SIZE - 1,
        pad_token_id=TINY_CLIP_VOCAB_SIZE - 1,
        **overrides,
    )


def tiny_unet(family: Family = "sd", channels: int = 4, sample_size: int = TINY_SAMPLE_SIZE) -> UNet2DConditionModel:
    """A two-level UNet2DConditionModel with SD's (or, for ``"sdxl"``, SDXL's text-time) conditioning."""
    common = dict(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    if family == "sd":
        return UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_TEXT_DIM,
            **common,
        )
    if family == "sdxl":
        return UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=2 * TINY_TEXT_DIM,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TINY_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TINY_TIME_EMBED_DIM + TINY_TEXT_DIM,
            **common,
        )
    raise ValueError(f"unknown family {family!r}; expected 'sd' or 'sdxl'")


def tiny_sd3_transformer(sample_size: int = TINY_SAMPLE_SIZE) -> SD3Transformer2DModel:
    """A two-block SD3.5-style MMDiT (a dual-attention block, RMS q/k norm) on 4-channel latents, 2 × 2 patches."""
    return SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TINY_T5_DIM,
        caption_projection_dim=16,
        pooled_projection_dim=2 * TINY_TEXT_DIM,
        pos_embed_max_size=sample_size,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def tiny_flux_transformer() -> FluxTransformer2DModel:
    """A FLUX.1-dev-style transformer (one double- and one single-stream block, guidance embedding) on
    4-channel latents packed into 2 × 2 patches (16 channels per token)."""
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TINY_T5_DIM,
        pooled_projection_dim=TINY_TEXT_DIM,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )


def tiny_t5() -> T5EncoderModel:
    """A two-layer T5 encoder on the tiny T5 vocabulary."""
    config = T5Config(
        vocab_size=TINY_T5_VOCAB_SIZE,
        d_model=TINY_T5_DIM,
        d_kv=8,
        d_ff=2 * TINY_T5_DIM,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def tiny_vae(scaling_factor: float = 0.18215, **overrides: object) -> AutoencoderKL:
    """A two-level AutoencoderKL: 3 × 16 × 16 images <-> 4 × 8 × 8 latents."""
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=2 * TINY_SAMPLE_SIZE,
        scaling_factor=scaling_factor,
        **overrides,
    )


def _sd3_parts(directory: Path, tokenizer: CLIPTokenizer, t5: bool) -> dict[str, Any]:
    return dict(
        transformer=tiny_sd3_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=TINY_SD3_SHIFT),
        vae=tiny_vae(scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config()),
        text_encoder_3=tiny_t5() if t5 else None,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        tokenizer_3=save_tiny_t5_tokenizer(directory / "tokenizer_3") if t5 else None,
    )


def _flux_parts(directory: Path, tokenizer: CLIPTokenizer) -> dict[str, Any]:
    return dict(
        transformer=tiny_flux_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        vae=tiny_vae(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=tiny_t5(),
        tokenizer=tokenizer,
        tokenizer_2=save_tiny_t5_tokenizer(directory / "tokenizer_2"),
    )


def _sd_parts(tokenizer: CLIPTokenizer, prediction_type: str, latent: bool) -> dict[str, Any]:
    parts: dict[str, Any] = dict(
        unet=tiny_unet("sd", channels=4 if latent else 3),
        text_encoder=CLIPTextModel(_text_config()),
        scheduler=DDIMScheduler(prediction_type=prediction_type, clip_sample=False, **_SD_SCHEDULER),
    )
    if latent:
        parts.update(vae=tiny_vae(), tokenizer=tokenizer, **NO_SAFETY_CHECKER)
    return parts


def _sdxl_parts(tokenizer: CLIPTokenizer, prediction_type: str) -> dict[str, Any]:
    return dict(
        unet=tiny_unet("sdxl"),
        text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config()),
        scheduler=EulerDiscreteScheduler(prediction_type=prediction_type, **_SD_SCHEDULER),
        vae=tiny_vae(scaling_factor=0.13025),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
    )


def save_tiny_pipeline(
    directory: str | Path,
    family: Family = "sd",
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
    *,
    seed: int = 0,
    latent: bool = True,
    t5: bool = True,
) -> Path:
    """Write a tiny random SD (``"sd"``), SDXL (``"sdxl"``), SD3 (``"sd3"``) or FLUX (``"flux"``)
    diffusers pipeline folder; return its path.

    Deterministic in ``seed`` (the global RNG state is left untouched). The scheduler has SD's
    ``scaled_linear`` betas 0.00085..0.012 over 1000 steps and the given ``prediction_type``.
    ``latent=False`` (``"sd"`` only) writes a pixel-space model: no VAE, the UNet works on images in
    [-1, 1] directly; its components are saved in the same subfolders, without ``model_index.json``.
    SD3 ignores ``prediction_type`` (its transformer predicts the flow velocity), has a
    ``FlowMatchEulerDiscreteScheduler`` with shift :data:`TINY_SD3_SHIFT`, a VAE with SD3's
    ``shift_factor`` and, with ``t5=False``, no T5 encoder (as SD3 without ``text_encoder_3``).
    FLUX has FLUX.1-dev's dynamically shifted flow scheduler, CLIP (pooled) + T5 and a guidance
    embedding; its pipeline defaults to 1024 px, so give tiny FLUX runs ``resolution: 16``.
    """
    if family not in PIPELINES:
        raise ValueError(f"unknown family {family!r}; expected 'sd', 'sdxl', 'sd3' or 'flux'")
    if not latent and family != "sd":
        raise ValueError("pixel-space tiny models exist for family 'sd' only")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = save_tiny_clip_tokenizer(directory / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "sd3":
            parts = _sd3_parts(directory, tokenizer, t5)
        elif family == "flux":
            parts = _flux_parts(directory, tokenizer)
        elif family == "sdxl":
            parts = _sdxl_parts(tokenizer, prediction_type)
        else:
            parts = _sd_parts(tokenizer, prediction_type, latent)
    if not latent:
        for name, part in parts.items():
            part.save_pretrained(directory / name)
        return directory
    PIPELINES[family](**parts).save_pretrained(directory)
    return directory


def tiny_pipeline_path(name: str) -> Path:
    """The tiny pipeline ``tiny:<name>`` (settings: :data:`~distar.backends.config.TINY_MODELS`),
    built once into ``$DISTAR_CACHE/tiny/<name>``."""
    return build_once(cache_dir() / "tiny" / name, lambda folder: save_tiny_pipeline(folder, **TINY_MODELS[name]))
