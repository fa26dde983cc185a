"""Weight mappings from the reward models' original code bases to transformers classes.

- open_clip ``CLIP`` (HPSv2/v2.1 checkpoints, ``ViT-H-14``) → :class:`transformers.CLIPModel`;
- BLIP (``ImageReward.pt``: a timm-style ViT + BLIP's BERT with cross-attention) →
  :class:`transformers.BlipVisionModel` + :class:`transformers.BlipTextModel`.

Both are renames, transposes and q/k/v splits driven by the tables below; the inverse mappings
write the tiny source-format checkpoints of :mod:`distar.testing.reward_models`. ``tests/rewards`` checks
the mappings against outputs of the source architectures (``tests/rewards/fixtures/``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor
from transformers import BlipTextConfig, BlipVisionConfig, CLIPConfig

from distar.config import ConfigError

#: open_clip's ``ViT-H-14`` model config, the architecture of the HPSv2 and HPSv2.1 checkpoints.
OPEN_CLIP_VIT_H_14: dict[str, Any] = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}

#: ``BLIP_Pretrain(image_size=224, vit='large')``: ViT-L/16, the image encoder of ImageReward.
BLIP_VIT_LARGE: dict[str, Any] = {
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
}


def clip_config_from_open_clip(model_cfg: Mapping[str, Any]) -> CLIPConfig:
    """The :class:`CLIPConfig` of an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``).

    Token ids follow open_clip's BPE layout: end-of-text is the largest id (open_clip pools the text
    at ``argmax(ids)``), start-of-text the one before.
    """
    vision, text = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    vocab = int(text["vocab_size"])
    return CLIPConfig(
        projection_dim=int(model_cfg["embed_dim"]),
        text_config={
            "vocab_size": vocab,
            "hidden_size": int(text["width"]),
            "intermediate_size": int(text["width"] * text.get("mlp_ratio", 4.0)),
            "num_hidden_layers": int(text["layers"]),
            "num_attention_heads": int(text.get("heads", 8)),
            "max_position_embeddings": int(text["context_length"]),
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "bos_token_id": vocab - 2,
            "eos_token_id": vocab - 1,
            "pad_token_id": vocab - 1,
        },
        vision_config={
            "hidden_size": int(vision["width"]),
            "intermediate_size": int(vision["width"] * vision.get("mlp_ratio", 4.0)),
            "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": int(vision["width"]) // int(vision.get("head_width", 64)),
            "image_size": int(vision["image_size"]),
            "patch_size": int(vision["patch_size"]),
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
        },
    )


#: open_clip name prefix → CLIPModel name prefix; ``{i}`` is a layer index. Tensors not listed
#: (``attn.in_proj_*`` split into q/k/v, the two projections stored transposed) are handled apart.
OPEN_CLIP_RENAMES: tuple[tuple[str, str], ...] = (
    ("token_embedding.", "text_model.embeddings.token_embedding."),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.", "text_model.final_layer_norm."),
    ("logit_scale", "logit_scale"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.conv1.", "vision_model.embeddings.patch_embedding."),
    ("visual.ln_pre.", "vision_model.pre_layrnorm."),
    ("visual.ln_post.", "vision_model.post_layernorm."),
) + tuple(
    (f"{src}resblocks.{{i}}.{a}", f"{dst}encoder.layers.{{i}}.{b}")
    for src, dst in (("visual.transformer.", "vision_model."), ("transformer.", "text_model."))
    for a, b in (("attn.out_proj.", "self_attn.out_proj."), ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."),
                 ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))
)
#: open_clip applies ``x @ P``; ``nn.Linear`` stores ``P^T``.
OPEN_CLIP_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}

#: BLIP's timm-style ViT names → ``BlipVisionModel`` names (BLIP's BERT already matches ``BlipTextModel``).
BLIP_VISION_RENAMES: tuple[tuple[str, str], ...] = (
    ("cls_token", "embeddings.class_embedding"),
    ("pos_embed", "embeddings.position_embedding"),
    ("patch_embed.proj.", "embeddings.patch_embedding."),
    ("norm.", "post_layernorm."),
) + tuple(
    (f"blocks.{{i}}.{a}", f"encoder.layers.{{i}}.{b}")
    for a, b in (("norm1.", "layer_norm1."), ("attn.qkv.", "self_attn.qkv."), ("attn.proj.", "self_attn.projection."),
                 ("norm2.", "layer_norm2."), ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."))
)


def _rename(key: str, renames: Sequence[tuple[str, str]], reverse: bool = False) -> tuple[str, str] | None:
    """(new prefix, rest of the key) for the first rule whose source prefix matches ``key``."""
    for src, dst in renames:
        if reverse:
            src, dst = dst, src
        pattern = re.escape(src).replace(r"\{i\}", r"(?P<i>\d+)")
        match = re.match(pattern, key)
        if match:
            index = match.groupdict().get("i")
            return (dst.replace("{i}", index) if index is not None else dst), key[match.end():]
    return None


def convert_open_clip_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an open_clip ``CLIP`` state dict (pre-norm ViT image tower, causal text tower) to CLIPModel keys."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        fused = re.fullmatch(r"(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key)
        renamed = _rename(key, OPEN_CLIP_RENAMES)
        if key in OPEN_CLIP_TRANSPOSED:
            out[OPEN_CLIP_TRANSPOSED[key]] = value.t()
        elif fused:
            tower = "vision_model" if fused.group(1) else "text_model"
            for proj, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{tower}.encoder.layers.{fused.group(2)}.self_attn.{proj}_proj.{fused.group(3)}"] = chunk
        elif renamed is not None:
            out["".join(renamed)] = value
        elif key != "attn_mask":
            raise ConfigError(f"open_clip checkpoint: unexpected key '{key}'")
    return {k: v.contiguous() for k, v in out.items()}


def open_clip_state_dict_from_clip(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`convert_open_clip_state_dict` (writes open_clip-format test checkpoints)."""
    out: dict[str, Tensor] = {}
    transposed = {v: k for k, v in OPEN_CLIP_TRANSPOSED.items()}
    for key, value in state_dict.items():
        split = re.fullmatch(r"(vision|text)_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)", key)
        renamed = _rename(key, OPEN_CLIP_RENAMES, reverse=True)
        if key in transposed:
            out[transposed[key]] = value.t()
        elif split:
            if split.group(3) == "q":
                prefix = f"{split.group(1)}_model.encoder.layers.{split.group(2)}.self_attn."
                tower = "visual.transformer" if split.group(1) == "vision" else "transformer"
                out[f"{tower}.resblocks.{split.group(2)}.attn.in_proj_{split.group(4)}"] = torch.cat(
                    [state_dict[f"{prefix}{p}_proj.{split.group(4)}"] for p in "qkv"]
                )
        elif renamed is not None:
            out["".join(renamed)] = value
        elif not key.endswith("position_ids"):
            raise ConfigError(f"CLIPModel state dict: unexpected key '{key}'")
    return {k: v.contiguous() for k, v in out.items()}


def blip_configs(
    med_config: Mapping[str, Any], vision: Mapping[str, Any] = BLIP_VIT_LARGE
) -> tuple[BlipVisionConfig, BlipTextConfig]:
    """Vision and text configs of a BLIP model from its ``med_config.json`` (BERT with cross-attention).

    ``vision`` holds the ViT sizes (``BLIP_VIT_LARGE`` for ImageReward); BLIP's ViT uses LayerNorm
    eps 1e-6 and exact GELU, and its text encoder attends to the ViT width.
    """
    vision_config = BlipVisionConfig(**dict(vision), hidden_act="gelu", layer_norm_eps=1e-6)
    text_config = BlipTextConfig(
        vocab_size=int(med_config["vocab_size"]),
        hidden_size=int(med_config["hidden_size"]),
        intermediate_size=int(med_config["intermediate_size"]),
        num_hidden_layers=int(med_config["num_hidden_layers"]),
        num_attention_heads=int(med_config["num_attention_heads"]),
        max_position_embeddings=int(med_config["max_position_embeddings"]),
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=float(med_config.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(med_config.get("pad_token_id", 0)),
        bos_token_id=int(med_config.get("bos_token_id", int(med_config["vocab_size"]) - 2)),  # BLIP's [DEC]
        sep_token_id=med_config.get("sep_token_id"),  # decoding only; unused by the encoder
        encoder_hidden_size=vision_config.hidden_size,
    )
    return vision_config, text_config


def convert_blip_state_dict(
    state_dict: Mapping[str, Tensor], prefix: str = "blip."
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a BLIP state dict into (``BlipVisionModel``, ``BlipTextModel``) state dicts.

    ``{prefix}visual_encoder.*`` is renamed from timm's ViT names; ``{prefix}text_encoder.*`` already
    uses BERT names. Other entries (heads, projections, decoders) are ignored.
    """
    vision: dict[str, Tensor] = {}
    text: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(f"{prefix}text_encoder.") and not key.endswith("position_ids"):
            text[key[len(f"{prefix}text_encoder."):]] = value
        elif key.startswith(f"{prefix}visual_encoder."):
            renamed = _rename(key[len(f"{prefix}visual_encoder."):], BLIP_VISION_RENAMES)
            if renamed is None:
                raise ConfigError(f"BLIP checkpoint: unexpected vision key '{key}'")
            vision["".join(renamed)] = value
    return vision, text


def blip_state_dict_from_hf(
    vision: Mapping[str, Tensor], text: Mapping[str, Tensor], prefix: str = "blip."
) -> dict[str, Tensor]:
    """Inverse of :func:`convert_blip_state_dict` (writes BLIP-format test checkpoints)."""
    out = {f"{prefix}text_encoder.{k}": v for k, v in text.items() if not k.endswith("position_ids")}
    for key, value in vision.items():
        renamed = _rename(key, BLIP_VISION_RENAMES, reverse=True)
        if renamed is None:
            raise ConfigError(f"BlipVisionModel state dict: unexpected key '{key}'")
        out[f"{prefix}visual_encoder.{''.join(renamed)}"] = value
    return out


def to_float(state_dict: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Floating tensors cast to ``dtype`` (checkpoints such as HPS's are stored in half precision)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
