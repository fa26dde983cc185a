"""Weight mappings and preprocessing against outputs of the reward models' own code (fixtures/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BlipTextModel, BlipVisionModel, CLIPModel

from distar.rewards import hub, load_reward
from distar.rewards.convert import (
    blip_configs,
    blip_state_dict_from_hf,
    clip_config_from_open_clip,
    convert_blip_state_dict,
    convert_open_clip_state_dict,
    open_clip_state_dict_from_clip,
    to_float,
)
from distar.rewards.preprocess import ImageTransform
from distar.testing.tokenizers import save_tiny_clip_tokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _fixture(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(FIXTURES / f"{name}.safetensors"), json.loads((FIXTURES / f"{name}.json").read_text())


def _uint8_image(hwc: torch.Tensor) -> torch.Tensor:
    return hwc.permute(2, 0, 1)[None].float() / 255


def _clip_features(model: CLIPModel, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=tokens).pooler_output)
    return image, text


def test_open_clip_mapping_reproduces_hps_source_model() -> None:
    tensors, meta = _fixture("hps_tiny")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    config = clip_config_from_open_clip(meta["model_cfg"])
    model = hub.from_state_dict(CLIPModel, config, convert_open_clip_state_dict(to_float(weights)), what="fixture")
    image, text = _clip_features(model, tensors["pixels"], tensors["tokens"])
    torch.testing.assert_close(image, tensors["image_features"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, tensors["text_features"], atol=1e-5, rtol=1e-5)


def test_hps_checkpoint_loads_through_load_reward(tmp_path: Path) -> None:
    """The fixture written as HPS_v2.1_compressed.pt + open_clip_config.json scores like the source model."""
    tensors, meta = _fixture("hps_tiny")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    torch.save({"state_dict": weights}, tmp_path / "HPS_v2.1_compressed.pt")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": meta["model_cfg"]}))
    save_tiny_clip_tokenizer(tmp_path)
    reward = load_reward("hpsv2.1", path=str(tmp_path))
    image = torch.nn.functional.normalize(reward.model.visual_projection(
        reward.model.vision_model(pixel_values=tensors["pixels"]).pooler_output), dim=-1)
    text = torch.nn.functional.normalize(reward.model.text_projection(
        reward.model.text_model(input_ids=tensors["tokens"]).pooler_output), dim=-1)
    torch.testing.assert_close(100 * (image * text).sum(-1), tensors["score"], atol=1e-4, rtol=1e-5)


def test_hps_pad_transform_matches_source_transform() -> None:
    tensors, _ = _fixture("hps_tiny")
    transform = ImageTransform(size=32, mode="pad", clamp=False)
    out = transform(_uint8_image(tensors["transform_input"]))[0]
    torch.testing.assert_close(out, tensors["transform_output"], atol=1e-5, rtol=1e-5)


def test_blip_mapping_reproduces_imagereward_source_model() -> None:
    from distar.rewards.head import LinearHead
    from distar.rewards.imagereward import ImageReward

    tensors, meta = _fixture("imagereward_tiny")
    weights = to_float({k: v for k, v in tensors.items() if k.startswith(("blip.", "mlp."))})
    vision_config, text_config = blip_configs(meta["med_config"], meta["vision_config"])
    vision_sd, text_sd = convert_blip_state_dict(weights)
    vision = hub.from_state_dict(BlipVisionModel, vision_config, vision_sd, what="fixture")
    text = hub.from_state_dict(BlipTextModel, text_config, text_sd, what="fixture", add_pooling_layer=False)
    head = LinearHead.from_mlp_state_dict(weights, prefix="mlp.layers.")
    reward = ImageReward(vision, text, head, tokenizer=None, transform=ImageTransform(size=32))  # type: ignore[arg-type]
    with torch.no_grad():
        embeds = vision(pixel_values=tensors["pixels"]).last_hidden_state
        rewards = reward.score_tokens(tensors["pixels"], tensors["input_ids"], tensors["attention_mask"])
    torch.testing.assert_close(embeds, tensors["image_embeds"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rewards, tensors["rewards"], atol=1e-5, rtol=1e-5)


def test_crop_transform_close_to_pil_transform() -> None:
    """Torch's antialiased bicubic vs ImageReward's PIL Resize + CenterCrop (+ uint8): about one grey level."""
    tensors, _ = _fixture("imagereward_tiny")
    out = ImageTransform(size=32)(_uint8_image(tensors["transform_input"]))[0]
    expected = tensors["transform_output"]
    assert out.shape == expected.shape
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    diff = ((out - expected) * std).abs()  # back in [0, 1] units
    assert diff.mean() < 2 / 255 and diff.max() < 8 / 255


def test_inverse_mappings_round_trip(tiny_paths: dict[str, Path]) -> None:
    model = CLIPModel.from_pretrained(tiny_paths["clip"])
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    back = convert_open_clip_state_dict(open_clip_state_dict_from_clip(state))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)

    vision_sd = {"embeddings.class_embedding": torch.randn(1, 1, 4),
                 "encoder.layers.3.self_attn.qkv.weight": torch.randn(12, 4)}
    text_sd = {"encoder.layer.0.crossattention.self.key.weight": torch.randn(4, 4)}
    blip = blip_state_dict_from_hf(vision_sd, text_sd)
    assert "blip.visual_encoder.blocks.3.attn.qkv.weight" in blip and "blip.visual_encoder.cls_token" in blip
    assert convert_blip_state_dict(blip) == (vision_sd, text_sd)


def test_live_open_clip_matches_when_installed() -> None:
    """Compares with open_clip itself where it is importable (never in distar's own environment)."""
    open_clip = pytest.importorskip("open_clip")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2},
    }
    torch.manual_seed(0)
    source = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"]).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = hub.from_state_dict(CLIPModel, clip_config_from_open_clip(cfg),
                                convert_open_clip_state_dict(source.state_dict()), what="live")
    pixels = torch.randn(2, 3, 32, 32)
    tokens = torch.tensor([[62, 5, 9, 63] + [0] * 12, [62, 7, 8, 9, 10, 63] + [0] * 10])
    image, text = _clip_features(model, pixels, tokens)
    with torch.no_grad():
        torch.testing.assert_close(image, source.encode_image(pixels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text, source.encode_text(tokens), atol=1e-5, rtol=1e-5)
