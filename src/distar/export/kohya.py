"""A generator LoRA in kohya's format, which ComfyUI and AUTOMATIC1111/Forge load as a LoRA file.

Each adapted UNet module ``M`` gives three tensors: ``lora_unet_<M>.lora_down.weight`` (peft's
``lora_A``), ``lora_unet_<M>.lora_up.weight`` (``lora_B``) and ``lora_unet_<M>.alpha``, a scalar; the
module's weight becomes ``W + (alpha / rank) · up · down``, with rank the rows of ``down``. ``<M>`` is
the module path with ``_`` for ``.``: diffusers' names for SD 1.x/2.x, the original (sgm) network's for
SDXL (``input_blocks_4_1_transformer_blocks_0_attn1_to_q``), as kohya's trainer names them.
Alpha is a tensor per module because loaders read it from there, not from the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from accelerate.utils import extract_model_from_parallel
from safetensors.torch import save_file
from torch import Tensor, nn

from distar.config import ConfigError
from distar.export.single_file import original_unet_key

#: ``ss_base_model_version`` of kohya's metadata per :func:`~distar.export.single_file.architecture_id`.
_BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2_768_v", "sdxl": "sdxl_base_v1-0"}


def kohya_lora_state_dict(
    unet: nn.Module, state: Mapping[str, Tensor] | None = None, *, architecture: str, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """The UNet's peft adapter as kohya tensors (``state``: the UNet's parameter values to use, e.g. EMA
    ones; ``architecture``: ``sd1``, ``sd2``, ``sd2-v`` or ``sdxl``, which names modules as the original)."""
    from distar.backends.lora import diffusers_lora_state_dict

    inner = extract_model_from_parallel(unet)
    config = inner.peft_config["default"]
    if config.rank_pattern or config.alpha_pattern or config.use_rslora or config.use_dora:
        raise ConfigError("--format kohya: per-module ranks or alphas, rsLoRA and DoRA have no kohya form")
    weights = diffusers_lora_state_dict(inner, state)
    out: dict[str, Tensor] = {}
    for key, value in weights.items():
        module, part = key.rsplit(".lora_", 1)
        if architecture == "sdxl":
            module = original_unet_key(module + ".weight", inner.config).removesuffix(".weight")
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(config.lora_alpha), dtype=dtype)
    return out


def save_kohya_lora(
    unet: nn.Module,
    file: str | Path,
    state: Mapping[str, Tensor] | None = None,
    *,
    architecture: str,
    dtype: torch.dtype = torch.float32,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write :func:`kohya_lora_state_dict` to ``file`` with kohya's ``ss_*`` metadata (rank, alpha,
    base model) and ``distar`` (the export's ``distar.json``); returns the file."""
    inner = extract_model_from_parallel(unet)
    config = inner.peft_config["default"]
    tensors = kohya_lora_state_dict(inner, state, architecture=architecture, dtype=dtype)
    info = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.r),
        "ss_network_alpha": str(float(config.lora_alpha)),
        "ss_base_model_version": _BASE_VERSION[architecture],
        **({"distar": json.dumps(dict(metadata), sort_keys=True)} if metadata else {}),
    }
    save_file(tensors, str(file), metadata=info)
    return Path(file)
