"""Tiny, randomly initialised Stable Diffusion / SDXL / SD3 / FLUX / SANA pipelines for tests and offline trials.

:func:`save_tiny_pipeline` writes a real diffusers pipeline folder (``model_index.json`` plus the
``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler`` subfolders; SDXL adds
``text_encoder_2``/``tokenizer_2``; SD3 has a ``transformer`` instead of the UNet, three text encoders
(CLIP-L, CLIP-G, T5) and a flow-matching scheduler; FLUX a transformer, CLIP and T5; SANA a
linear-attention transformer, a Gemma-2 encoder and a DC-AE) that loads back with ``DiffusionPipeline.from_pretrained``. The networks are a
few thousand parameters: latents are 4 × 8 × 8, images 3 × 16 × 16 (SANA: 3 × 32 × 32, its pipeline
takes multiples of 32). The pixel-space variant (``latent=False``) has no VAE and a 3-channel UNet:
the layout of pixel-space "sd" models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    T5Config,
    T5EncoderModel,
)

from distar.backends.config import TINY_MODELS
from distar.backends.loading import NO_SAFETY_CHECKER, PIPELINES
from distar.io import build_once, cache_dir
from distar.testing.tokenizers import (
    TINY_CLIP_VOCAB_SIZE,
    TINY_GEMMA_VOCAB_SIZE,
    TINY_T5_VOCAB_SIZE,
    save_tiny_clip_tokenizer,
    save_tiny_gemma_tokenizer,
    save_tiny_t5_tokenizer,
)

Family = Literal["sd", "sdxl", "sd3", "flux", "sana"]

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

#: Width of the tiny Gemma-2 encoder, which is the SANA transformer's caption width.
TINY_GEMMA_DIM = 16
#: ``flow_shift`` of the tiny SANA scheduler (a flow-sigma DPM-Solver, as SANA's 1024 px checkpoints ship).
TINY_SANA_SHIFT = 3.0

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


def tiny_sana_transformer() -> SanaTransformer2DModel:
    """A two-block SANA transformer (linear self-attention, cross-attention, Mix-FFN) on 4-channel
    8 × 8 latents, 1 × 1 patches, captions :data:`TINY_GEMMA_DIM` wide."""
    return SanaTransformer2DModel(
        in_channels=4, out_channels=4, sample_size=TINY_SAMPLE_SIZE, patch_size=1, num_layers=2,
        num_attention_heads=2, attention_head_dim=8,  # self-attention, 16 wide
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
        caption_channels=TINY_GEMMA_DIM,
    )


def tiny_gemma2() -> Gemma2Model:
    """A one-layer Gemma-2 decoder stack (SANA's text encoder) without attention soft-capping, which
    only slows the long prompts that SANA's complex human instruction makes."""
    config = Gemma2Config(
        vocab_size=TINY_GEMMA_VOCAB_SIZE, pad_token_id=0, eos_token_id=1, bos_token_id=2,  # the tiny tokenizer's ids
        hidden_size=TINY_GEMMA_DIM, intermediate_size=2 * TINY_GEMMA_DIM, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, attn_logit_softcapping=None,
        max_position_embeddings=4096,
    )
    return Gemma2Model(config)


def tiny_dc_ae() -> AutoencoderDC:
    """A three-level deep-compression autoencoder (two residual stages, one EfficientViT stage):
    3 × 32 × 32 images <-> 4 × 8 × 8 latents, DC-AE-f32c32's scaling factor."""
    stages = dict(
        block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        block_out_channels=(8, 8, 16),
        layers_per_block=(1, 1, 1),
        qkv_multiscales=((), (), (5,)),
    )
    sides = {f"{side}_{key}": value for side in ("encoder", "decoder") for key, value in stages.items()}
    return AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=4, scaling_factor=0.41407, **sides)


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



def _sana_parts(tokenizer: GemmaTokenizer) -> dict[str, Any]:
    return dict(
        tokenizer=tokenizer,
        text_encoder=tiny_gemma2(),
        vae=tiny_dc_ae(),
        transformer=tiny_sana_transformer(),
        scheduler=DPMSolverMultistepScheduler(
            flow_shift=TINY_SANA_SHIFT, use_flow_sigmas=True, prediction_type="flow_prediction"
        ),
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
    """Write a tiny random SD (``"sd"``), SDXL (``"sdxl"``), SD3 (``"sd3"``), FLUX (``"flux"``) or SANA
    (``"sana"``) diffusers pipeline folder; return its path.

    Deterministic in ``seed`` (the global RNG state is left untouched). The scheduler has SD's
    ``scaled_linear`` betas 0.00085..0.012 over 1000 steps and the given ``prediction_type``.
    ``latent=False`` (``"sd"`` only) writes a pixel-space model: no VAE, the UNet works on images in
    [-1, 1] directly; its components are saved in the same subfolders, without ``model_index.json``.
    SD3 ignores ``prediction_type`` (its transformer predicts the flow velocity), has a
    ``FlowMatchEulerDiscreteScheduler`` with shift :data:`TINY_SD3_SHIFT`, a VAE with SD3's
    ``shift_factor`` and, with ``t5=False``, no T5 encoder (as SD3 without ``text_encoder_3``).
    FLUX has FLUX.1-dev's dynamically shifted flow scheduler, CLIP (pooled) + T5 and a guidance
    embedding; its pipeline defaults to 1024 px, so give tiny FLUX runs ``resolution: 16``. SANA has
    a Gemma-2 encoder with a character-level Gemma tokenizer, a DC-AE and, as SANA's checkpoints, a
    flow-sigma ``DPMSolverMultistepScheduler`` with ``flow_shift`` :data:`TINY_SANA_SHIFT`; it
    generates 32 px images by default.
    """
    if family not in PIPELINES:
        raise ValueError(f"unknown family {family!r}; expected 'sd', 'sdxl', 'sd3', 'flux' or 'sana'")
    if not latent and family != "sd":
        raise ValueError("pixel-space tiny models exist for family 'sd' only")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_of = save_tiny_gemma_tokenizer if family == "sana" else save_tiny_clip_tokenizer
    tokenizer = tokenizer_of(directory / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "sana":
            parts = _sana_parts(tokenizer)
        elif family == "sd3":
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
