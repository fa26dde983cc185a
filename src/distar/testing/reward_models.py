"""Tiny, randomly initialised reward models in the published file layouts (tests, offline trials).

``save_tiny_reward_models(directory)`` writes one model per reward name and returns the paths to
pass as ``load_reward(name, path=...)``. Each folder has the same files as the real model (a
``CLIPModel`` folder for PickScore/CLIP, an open_clip ``HPS_v2*.pt`` checkpoint, ``ImageReward.pt`` +
``med_config.json``, the aesthetic ``.pth`` head) plus a tokenizer and a ``preprocessor_config.json``
for 32×32 images, so they load through exactly the same code as the real checkpoints. Scores are
meaningless; shapes, scales and gradients are real.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from transformers import (
    BertTokenizer,
    BlipTextModel,
    BlipVisionModel,
    CLIPConfig,
    CLIPModel,
)

from distar.io import build_once, cache_dir
from distar.rewards.aesthetic import AestheticReward
from distar.rewards.clip import HPSv2
from distar.rewards.convert import (
    blip_configs,
    blip_state_dict_from_hf,
    clip_config_from_open_clip,
    open_clip_state_dict_from_clip,
)
from distar.rewards.head import LINEAR_INDICES
from distar.rewards.hub import quiet_transformers
from distar.rewards.preprocess import OPENAI_MEAN, OPENAI_STD
from distar.rewards.spec import REWARD_NAMES
from distar.testing.tokenizers import TINY_CLIP_VOCAB_SIZE, save_tiny_clip_tokenizer

#: Side of the images the tiny models are configured for.
TINY_IMAGE_SIZE = 32

#: open_clip model config of the tiny HPS stand-ins (vocabulary of :func:`~distar.testing.tokenizers.save_tiny_clip_tokenizer`).
TINY_OPEN_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": TINY_IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": TINY_CLIP_VOCAB_SIZE, "width": 32, "heads": 2, "layers": 2},
}
#: Sizes of the tiny ImageReward (BLIP) towers.
TINY_BLIP_VISION: dict[str, Any] = {
    "image_size": TINY_IMAGE_SIZE, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 2,
}
TINY_MED_CONFIG: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "max_position_embeddings": 40, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
    "add_cross_attention": True,
}
#: Widths of the tiny linear MLP heads (the real ones: 1024, 128, 64, 16, 1).
TINY_HEAD_WIDTHS = (32, 16, 8, 4, 1)


def save_preprocessor_config(directory: Path, size: int = TINY_IMAGE_SIZE) -> None:
    """A ``CLIPImageProcessor`` config: short side to ``size`` (bicubic), centre crop, OpenAI mean/std."""
    config = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD), "do_convert_rgb": True,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


def _random_clip(seed: int) -> CLIPModel:
    config: CLIPConfig = clip_config_from_open_clip(TINY_OPEN_CLIP_CFG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config).eval()


def _random_mlp_state_dict(in_features: int, seed: int) -> dict[str, torch.Tensor]:
    """``layers.{0,2,4,6,7}`` of a head with :data:`TINY_HEAD_WIDTHS` (the original key layout)."""
    state: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index, width in zip(LINEAR_INDICES, TINY_HEAD_WIDTHS):
            layer = nn.Linear(in_features, width)
            state[f"layers.{index}.weight"], state[f"layers.{index}.bias"] = layer.weight.data, layer.bias.data
            in_features = width
    return state


def save_tiny_clip_model(directory: str | Path, seed: int = 0) -> Path:
    """A ``CLIPModel`` folder with tokenizer and preprocessor config (PickScore / CLIP score layout)."""
    directory = Path(directory)
    _random_clip(seed).save_pretrained(directory)
    save_tiny_clip_tokenizer(directory)
    save_preprocessor_config(directory)
    return directory


def save_tiny_hps(directory: str | Path, name: str = "hpsv2.1", seed: int = 0) -> Path:
    """An HPS folder: open_clip-format ``HPS_v2*.pt`` (``{"state_dict": ...}``), ``open_clip_config.json``,
    tokenizer and preprocessor config."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_dict = open_clip_state_dict_from_clip(_random_clip(seed).state_dict())
    torch.save({"state_dict": state_dict}, directory / HPSv2.FILES[name])
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP_CFG}, indent=2))
    save_tiny_clip_tokenizer(directory)
    save_preprocessor_config(directory)
    return directory


def save_tiny_aesthetic(directory: str | Path, seed: int = 0) -> Path:
    """A CLIP image encoder folder plus the MLP head as ``sac+logos+ava1-l14-linearMSE.pth``."""
    directory = save_tiny_clip_model(directory, seed)
    embed_dim = int(TINY_OPEN_CLIP_CFG["embed_dim"])
    torch.save(_random_mlp_state_dict(embed_dim, seed + 1), directory / AestheticReward.FILE)
    return directory


def save_tiny_bert_tokenizer(directory: str | Path) -> BertTokenizer:
    """A real WordPiece :class:`BertTokenizer` over lower-case characters (plus BLIP's [DEC]/[ENC])."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tokenizer.save_pretrained(directory)
    return tokenizer


def save_tiny_imagereward(directory: str | Path, seed: int = 0) -> Path:
    """An ImageReward folder: ``ImageReward.pt`` (BLIP key names), ``med_config.json``,
    ``vision_config.json`` (the tiny ViT), tokenizer and preprocessor config."""
    directory = Path(directory)
    tokenizer = save_tiny_bert_tokenizer(directory)
    med_config = dict(TINY_MED_CONFIG, vocab_size=len(tokenizer))
    vision_config, text_config = blip_configs(med_config, TINY_BLIP_VISION)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vision = BlipVisionModel(vision_config)
        text = BlipTextModel(text_config, add_pooling_layer=False)
    state_dict = blip_state_dict_from_hf(vision.state_dict(), text.state_dict())
    state_dict.update({f"mlp.{k}": v for k, v in _random_mlp_state_dict(text_config.hidden_size, seed + 1).items()})
    torch.save(state_dict, directory / "ImageReward.pt")
    (directory / "med_config.json").write_text(json.dumps(med_config, indent=2))
    (directory / "vision_config.json").write_text(json.dumps(TINY_BLIP_VISION, indent=2))
    save_preprocessor_config(directory)
    return directory


def save_tiny_reward(name: str, directory: str | Path, seed: int = 0) -> Path:
    """The tiny stand-in for reward ``name`` in ``directory``."""
    with quiet_transformers():
        return _save_tiny_reward(name, directory, seed)


def _save_tiny_reward(name: str, directory: str | Path, seed: int) -> Path:
    if name in ("pickscore", "clip"):
        return save_tiny_clip_model(directory, seed)
    if name in HPSv2.FILES:
        return save_tiny_hps(directory, name, seed)
    if name == "imagereward":
        return save_tiny_imagereward(directory, seed)
    if name == "aesthetic":
        return save_tiny_aesthetic(directory, seed)
    raise ValueError(f"unknown reward '{name}'")


def save_tiny_reward_models(directory: str | Path, names: Iterable[str] = REWARD_NAMES) -> dict[str, Path]:
    """One tiny model per reward name under ``directory/<name>``; returns {name: path for load_reward}."""
    directory = Path(directory)
    return {name: save_tiny_reward(name, directory / name, seed=i) for i, name in enumerate(names)}


def tiny_reward_path(name: str) -> Path:
    """A tiny model for ``name`` (``path: tiny`` in configs), built once into the distar cache."""
    if name not in REWARD_NAMES:
        raise ValueError(f"unknown reward '{name}'")
    seed = REWARD_NAMES.index(name)
    return build_once(cache_dir() / "tiny-rewards" / name, lambda d: save_tiny_reward(name, d, seed=seed))
