"""Build a backend from a :class:`~distar.backends.config.ModelConfig`."""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UpDecoderBlock2D
from torch import nn

from distar.backends.config import ModelConfig
from distar.backends.flux import FluxBackend
from distar.backends.loading import TEXT_ENCODERS, denoiser, load_denoiser_init, load_pipeline
from distar.backends.lora import add_lora, cast_, checkpoint_keeping_adapter_state
from distar.backends.sana import SanaBackend
from distar.backends.sd import StableDiffusionBackend
from distar.backends.sd3 import StableDiffusion3Backend
from distar.backends.sdxl import StableDiffusionXLBackend

#: The backend class of each ``model.family``.
BACKENDS: dict[str, type[StableDiffusionBackend]] = {
    "sd": StableDiffusionBackend,
    "sdxl": StableDiffusionXLBackend,
    "sd3": StableDiffusion3Backend,
    "flux": FluxBackend,
    "sana": SanaBackend,
}


def frozen_dtype(cfg: ModelConfig, dtype: torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given, else the config's ``dtype`` name."""
    return dtype or getattr(torch, cfg.dtype)


def build_generator(cfg: ModelConfig, reference: ModelMixin, dtype: torch.dtype) -> ModelMixin:
    """g_θ's network (UNet or transformer): a float32 copy of the reference or of ``cfg.generator_init``.

    With ``generator_lora_rank > 0`` its base weights are frozen in ``dtype`` and a LoRA adapter is
    the trainable part.
    """
    if cfg.generator_init:
        net = load_denoiser_init(cfg.generator_init, reference.config, cls=type(reference))
    else:
        net = copy.deepcopy(reference)
    if cfg.generator_lora_rank:
        cast_(net, dtype)
        add_lora(net, cfg.generator_lora_rank, cfg.lora_alpha, cfg.lora_target_modules)
    return net


def build_backend(
    cfg: ModelConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    *,
    offload_device: torch.device | str = "cpu",
) -> StableDiffusionBackend:
    """Load the reference and build generator, assistant and reference on ``device``.

    ``dtype`` (default: ``cfg.dtype``) is the dtype of frozen weights; trainable weights are float32.
    With ``cfg.offload_text_encoders`` the text encoders wait on ``offload_device`` between encodings.
    Layouts (every family): separate reference + trainable assistant copy (default); assistant LoRA on a copy
    (``assistant_lora_rank > 0, assistant_lora_shared: false``); or the shared layout where the
    assistant is a LoRA adapter on the reference's own UNet (``backend.reference`` is None).
    """
    dtype = frozen_dtype(cfg, dtype)
    pipe = load_pipeline(cfg, dtype)
    for name in ("vae", *TEXT_ENCODERS):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False).eval()
    net = denoiser(pipe)
    generator = build_generator(cfg, net, dtype)
    rank = cfg.assistant_lora_rank
    shared = rank > 0 and cfg.assistant_lora_shared
    assistant = None if shared else copy.deepcopy(net)  # float32 copy, made before the reference is cast
    reference = cast_(net, dtype).requires_grad_(False).eval()
    if shared:
        assistant = reference
    elif rank:
        cast_(assistant, dtype)
    if rank:
        add_lora(assistant, rank, cfg.lora_alpha, cfg.lora_target_modules)
    unets = [generator, assistant] + ([] if assistant is reference else [reference])
    for module in unets:
        module.to(device)
        if cfg.gradient_checkpointing:
            module.enable_gradient_checkpointing(checkpoint_keeping_adapter_state)
        if cfg.compile:
            module.compile()  # in place: parameter and state_dict names stay those of the UNet
    if pipe.vae is not None:
        pipe.vae.to(device)
        if cfg.gradient_checkpointing and pipe.vae._supports_gradient_checkpointing:  # not SANA's DC-AE
            pipe.vae.enable_gradient_checkpointing(checkpoint_layer_by_layer)
    for name in TEXT_ENCODERS:
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).to(offload_device if cfg.offload_text_encoders else device)
    options: dict[str, Any] = (
        dict(prediction_type="flow_prediction", max_sequence_length=cfg.max_sequence_length)
        if cfg.flow
        else dict(prediction_type=cfg.prediction_type or pipe.scheduler.config.prediction_type)
    )
    if cfg.family == "flux":
        options["guidance"] = cfg.guidance
    return BACKENDS[cfg.family](
        pipe,
        generator,
        assistant,
        None if assistant is reference else reference,
        t_init=cfg.t_init,
        timesteps=cfg.generator_timesteps,
        resolution=cfg.resolution,
        device=device,
        offload_text_encoders=cfg.offload_text_encoders,
        offload_device=offload_device,
        prompt_cache_size=cfg.prompt_cache_size,
        **options,
    )


def checkpoint_layer_by_layer(block: nn.Module, *args: Any) -> Any:
    """Gradient checkpointing for the VAE that recomputes a decoder up-block one layer at a time.

    diffusers checkpoints each whole up-block; at 1024 px the last one holds three 128-channel
    ResNet layers at full resolution, whose recomputed activations (float32 group norms under CUDA
    autocast) are several GiB at once. Checkpointing each ResNet and upsampler alone keeps one layer's
    activations, plus the layers' inputs. Other blocks are checkpointed whole.
    """
    if not isinstance(block, UpDecoderBlock2D):
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    hidden, *rest = args
    temb = rest[0] if rest else None
    for resnet in block.resnets:
        hidden = torch.utils.checkpoint.checkpoint(resnet, hidden, temb, use_reentrant=False)
    for upsampler in block.upsamplers or []:
        hidden = torch.utils.checkpoint.checkpoint(upsampler, hidden, use_reentrant=False)
    return hidden
