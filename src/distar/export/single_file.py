"""A Stable Diffusion 1.x/2.x or SDXL pipeline as one checkpoint file in the original key layout.

ComfyUI, AUTOMATIC1111/Forge and diffusers' ``from_single_file`` read checkpoints in the layout of the
original code bases (CompVis' ``ldm`` for SD 1.x/2.x, Stability's ``sgm`` for SDXL):

- UNet ``model.diffusion_model.*``: ``input_blocks`` / ``middle_block`` / ``output_blocks`` numbered
  in the order the original network builds them (:func:`unet_to_original`);
- VAE ``first_stage_model.*``: ``encoder.down.*`` / ``decoder.up.*`` (decoder levels numbered from the
  bottom), 1×1-convolution attention (:func:`vae_to_original`);
- text encoders: SD 1.x's CLIP ViT-L as transformers names under ``cond_stage_model.transformer.``;
  SD 2.x's OpenCLIP ViT-H in open_clip's names under ``cond_stage_model.model.``; SDXL's two under
  ``conditioner.embedders.0.transformer.`` (CLIP ViT-L) and ``conditioner.embedders.1.model.``
  (OpenCLIP ViT-bigG, with its text projection).

The renames are the inverse of diffusers' ``diffusers.loaders.single_file_utils`` conversions, and
tests check both directions. diffusers keeps only the 23 OpenCLIP-H layers that SD 2.x uses (it reads
the penultimate layer), so an SD 2.x file lacks the original's unused last layer and text projection.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from distar.config import ConfigError
from distar.rewards.convert import open_clip_state_dict_from_clip

logger = logging.getLogger(__name__)

#: Prefix of each component in the original layout.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD_CLIP_PREFIX = "cond_stage_model.transformer."
SD_OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

#: diffusers resnet names → the original ``ResBlock``'s.
_UNET_RESNET = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _renamed(rest: str, renames: Any) -> str:
    for old, new in renames:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _block_part(kind: str, rest: str) -> str:
    """Within an original block: the resnet at ``0`` (renamed), the attention at ``1``."""
    return f"0.{_renamed(rest, _UNET_RESNET)}" if kind == "resnets" else f"1.{rest}"


def original_unet_key(key: str, config: Mapping[str, Any]) -> str:
    """The original name of one diffusers UNet weight (``config``: the UNet's config)."""
    per_level = int(config["layers_per_block"]) + 1  # resnets per level in the up path; down: + a downsampler
    for old, new in _UNET_TOP.items():
        if key.startswith(old):
            return new + key[len(old):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + level * per_level + j
        return f"input_blocks.{index}.{_block_part(kind, rest)}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_renamed(m[2], _UNET_RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = level * per_level + j
        return f"output_blocks.{index}.{_block_part(kind, rest)}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level = int(m[1])
        has_attention = "CrossAttn" in config["up_block_types"][level]
        return f"output_blocks.{level * per_level + per_level - 1}.{2 if has_attention else 1}.conv.{m[2]}"
    raise ConfigError(f"single-file export: no original name for UNet weight '{key}'")


def unet_to_original(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """A diffusers SD/SDXL UNet state dict in the original ``UNetModel`` names (no prefix)."""
    if not isinstance(config["layers_per_block"], int):
        raise ConfigError("single-file export: UNets with per-level layers_per_block have no original layout")
    return {original_unet_key(k, config): v for k, v in state.items()}


def _vae_key(key: str, levels: int) -> str:
    coder, rest = key.split(".", 1) if key.startswith(("encoder.", "decoder.")) else ("", key)
    if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", rest):
        side, level, kind, j, tail = m[1], int(m[2]), m[3], m[4], m[5]
        level = level if side == "down" else levels - 1 - level  # the original numbers decoder levels bottom-up
        if kind == "resnets":
            rest = f"{side}.{level}.block.{j}.{_renamed(tail, [('conv_shortcut.', 'nin_shortcut.')])}"
        else:
            rest = f"{side}.{level}.{side}sample.{tail}"
    elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest):
        rest = f"mid.block_{int(m[1]) + 1}.{_renamed(m[2], [('conv_shortcut.', 'nin_shortcut.')])}"
    elif m := re.match(r"mid_block\.attentions\.0\.(.*)", rest):
        rest = f"mid.attn_1.{_renamed(m[1], _VAE_ATTENTION.items())}"
    elif rest.startswith("conv_norm_out."):
        rest = "norm_out." + rest[len("conv_norm_out."):]
    return f"{coder}.{rest}" if coder else rest


def vae_to_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the original ``AutoencoderKL`` names (no prefix);
    the mid-block attention's linear weights become the original's 1×1 convolutions."""
    levels = 1 + max(int(m[1]) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    out = {}
    for key, value in state.items():
        new = _vae_key(key, levels)
        conv = ".mid.attn_1." in new and new.endswith("weight") and value.ndim == 2
        out[new] = value[:, :, None, None] if conv else value
    return out


def clip_to_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``CLIPTextModel(WithProjection)`` state dict under the ``text_model.`` names that the original
    code's transformers version used (newer ``CLIPTextModel`` drops the prefix; ``position_ids``
    buffers dropped)."""
    return {
        (k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
        for k, v in state.items()
        if not k.endswith("position_ids")
    }


def open_clip_to_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``CLIPTextModel(WithProjection)`` state dict as open_clip's text tower (``transformer.resblocks.*``,
    ``positional_embedding``, ``text_projection`` as ``x @ P``)."""
    return open_clip_state_dict_from_clip(clip_to_original(state))


def _prefixed(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


def is_open_clip(text_encoder: Any) -> bool:
    """Whether an SD text encoder is OpenCLIP's (SD 2.x: GELU) rather than OpenAI's CLIP ViT-L (SD 1.x: quick GELU)."""
    return text_encoder.config.hidden_act == "gelu"


def original_state_dict(unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any = None) -> dict[str, Tensor]:
    """SD (``text_encoder_2`` None) or SDXL components' weights in the original single-file layout,
    each tensor contiguous, in its own dtype and on its own device."""
    state = _prefixed(UNET_PREFIX, unet_to_original(unet.state_dict(), unet.config))
    state |= _prefixed(VAE_PREFIX, vae_to_original(vae.state_dict()))
    text = text_encoder.state_dict()
    if text_encoder_2 is not None:
        state |= _prefixed(SDXL_CLIP_PREFIX, clip_to_original(text))
        state |= _prefixed(SDXL_OPEN_CLIP_PREFIX, open_clip_to_original(text_encoder_2.state_dict()))
    elif is_open_clip(text_encoder):
        state |= _prefixed(SD_OPEN_CLIP_PREFIX, open_clip_to_original(text))
    else:
        state |= _prefixed(SD_CLIP_PREFIX, clip_to_original(text))
    return {k: v.detach().contiguous() for k, v in state.items()}


def single_file_state_dict(pipe: Any) -> dict[str, Tensor]:
    """The weights of a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` in the original
    single-file layout (:func:`original_state_dict`), on the CPU."""
    second = pipe.text_encoder_2 if architecture_id(pipe) == "sdxl" else None
    return {k: v.cpu() for k, v in original_state_dict(pipe.unet, pipe.vae, pipe.text_encoder, second).items()}


#: ModelSpec architecture ids (the ``modelspec.*`` safetensors metadata that UIs display).
_MODELSPEC_ARCHITECTURE = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sd2-v": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
}


def architecture_id(pipe: Any) -> str:
    """``sd1``, ``sd2``, ``sd2-v`` (v-prediction) or ``sdxl``: the original code base's variant of the
    pipeline; :class:`ConfigError` for pipelines of other families."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise ConfigError(f"--format: only SD 1.x/2.x and SDXL have the original layouts, not {type(pipe).__name__}")
    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if not is_open_clip(pipe.text_encoder):
        return "sd1"
    return "sd2-v" if pipe.scheduler.config.get("prediction_type") == "v_prediction" else "sd2"


def sd_turbo_denoise(timesteps: list[int]) -> float | None:
    """The ``denoise`` of ComfyUI's ``SDTurboScheduler`` that gives ``timesteps`` (it takes ``steps``
    consecutive values of 999, 899, ..., 99, starting ``10·(1 − denoise)`` values in), or None."""
    first = (999 - timesteps[0]) // 100
    if (999 - timesteps[0]) % 100 or timesteps != [999 - 100 * (first + i) for i in range(len(timesteps))]:
        return None
    return round(1 - first / 10, 1) if first + len(timesteps) <= 10 else None


def comfyui_workflow(metadata: Mapping[str, Any], checkpoint_name: str) -> dict[str, Any] | None:
    """A ComfyUI workflow in its API format (``/prompt`` body, or "Load" in the UI) that runs the
    generator: checkpoint → prompt → ``SamplerCustom`` with the ``lcm`` sampler, CFG 1 (off) and
    ``SDTurboScheduler`` sigmas at the generator's timesteps → VAE decode → saved image. None when the
    timesteps are not ones that scheduler gives (see :func:`sd_turbo_denoise`)."""
    timesteps = [int(t) for t in metadata.get("timesteps") or [metadata["t_init"]]]
    denoise = sd_turbo_denoise(timesteps)
    if denoise is None:
        return None
    side = int(metadata["resolution"])
    node = lambda cls, **inputs: {"class_type": cls, "inputs": inputs}  # noqa: E731
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name=checkpoint_name),
        "2": node("CLIPTextEncode", text="a photo of a corgi in a field of flowers", clip=["1", 1]),
        "3": node("CLIPTextEncode", text="", clip=["1", 1]),
        "4": node("EmptyLatentImage", width=side, height=side, batch_size=1),
        "5": node("KSamplerSelect", sampler_name="lcm"),
        "6": node("SDTurboScheduler", model=["1", 0], steps=len(timesteps), denoise=denoise),
        "7": node(
            "SamplerCustom", model=["1", 0], add_noise=True, noise_seed=0, cfg=1.0, positive=["2", 0],
            negative=["3", 0], sampler=["5", 0], sigmas=["6", 0], latent_image=["4", 0],
        ),
        "8": node("VAEDecode", samples=["7", 0], vae=["1", 2]),
        "9": node("SaveImage", images=["8", 0], filename_prefix="distar"),
    }


def single_file_metadata(pipe: Any, metadata: Mapping[str, Any], title: str) -> dict[str, str]:
    """The file's safetensors metadata: ``distar`` (the export's ``distar.json``, as JSON: t_init,
    timesteps, resolution, ...) and the ModelSpec fields that UIs show (architecture, resolution,
    prediction type, a usage hint)."""
    import json

    timesteps = list(metadata.get("timesteps") or [metadata["t_init"]])
    side, prediction = metadata["resolution"], pipe.scheduler.config.get("prediction_type")
    hint = (
        f"{len(timesteps)} step(s) at timestep(s) {', '.join(map(str, timesteps))} from pure noise, CFG off "
        "(scale 1), LCM sampler; see the distar metadata"
    )
    return {
        "distar": json.dumps(dict(metadata), sort_keys=True),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": _MODELSPEC_ARCHITECTURE[architecture_id(pipe)],
        "modelspec.title": title,
        "modelspec.resolution": f"{side}x{side}",
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
        "modelspec.usage_hint": hint,
    }


#: The ComfyUI workflow written next to a single-file export.
COMFYUI_WORKFLOW_FILE = "comfyui_workflow.json"


def write_single_file(pipe: Any, folder: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``pipe`` as ``folder / metadata["file"]`` (:func:`single_file_state_dict`, with
    :func:`single_file_metadata`) and, when its timesteps allow, :data:`COMFYUI_WORKFLOW_FILE`;
    returns the checkpoint file."""
    import json

    from safetensors.torch import save_file

    folder = Path(folder)
    file = folder / metadata["file"]
    state = single_file_state_dict(pipe)
    save_file(state, str(file), metadata=single_file_metadata(pipe, metadata, title=file.stem))
    workflow = comfyui_workflow(metadata, file.name)
    timesteps = list(metadata.get("timesteps") or [metadata["t_init"]])
    if workflow is None:
        logger.info("no %s: ComfyUI's SDTurboScheduler gives no timesteps %s", COMFYUI_WORKFLOW_FILE, timesteps)
    else:
        (folder / COMFYUI_WORKFLOW_FILE).write_text(json.dumps(workflow, indent=1) + "\n")
    if timesteps[0] < 999:
        logger.info(
            "ComfyUI and A1111 start below timestep 999 from noise weaker than the pure noise this generator "
            "takes at t_init %d: their image differs from distar's (docs/single-file.md)", timesteps[0]
        )
    return file
