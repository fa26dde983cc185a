"""Each reward's score formula against a direct computation with transformers' own classes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from distar.rewards import load_reward
from distar.rewards.head import LinearHead
from distar.rewards.imagereward import ImageReward
from distar.rewards.preprocess import ImageTransform


def _pil_and_tensor(height: int, width: int, seed: int) -> tuple[Image.Image, torch.Tensor]:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1).float()[None] / 255


def _direct_clip_cosine(folder: Path, image: Image.Image, prompt: str) -> tuple[float, CLIPModel]:
    """cos(image, text) through CLIPModel + its own processor and tokenizer (the reference path)."""
    model = CLIPModel.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder, use_fast=False)(images=image, return_tensors="pt").pixel_values
    tokens = AutoTokenizer.from_pretrained(folder)([prompt], padding=True, truncation=True, max_length=77,
                                                   return_tensors="pt")
    with torch.no_grad():
        e_img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        e_txt = model.text_projection(model.text_model(**tokens).pooler_output)
    return float(F.cosine_similarity(e_img, e_txt)), model


@pytest.mark.parametrize("size", [(32, 32), (48, 72)])
def test_pickscore_is_the_clip_cosine(tiny_paths: dict[str, Path], size: tuple[int, int]) -> None:
    """At the model's resolution the torch path equals the PIL processor path; after a resize it is close."""
    image, x = _pil_and_tensor(*size, seed=1)
    expected, model = _direct_clip_cosine(tiny_paths["pickscore"], image, "a red cat")
    with torch.no_grad():
        cosine = load_reward("pickscore", path=str(tiny_paths["pickscore"])).score(x, ["a red cat"])
        logit = load_reward("pickscore", path=str(tiny_paths["pickscore"]), form="logit").score(x, ["a red cat"])
    tolerance = 1e-5 if size == (32, 32) else 5e-3
    assert abs(float(cosine) - expected) < tolerance
    assert float(logit) == pytest.approx(math.exp(model.logit_scale.item()) * float(cosine), rel=1e-5)


def test_clip_score_is_100_cosine_and_truncation_keeps_eos(tiny_paths: dict[str, Path]) -> None:
    image, x = _pil_and_tensor(32, 32, seed=2)
    long_prompt = "a very long prompt about a lighthouse at dusk " * 6  # > 77 character tokens
    reward = load_reward("clip", path=str(tiny_paths["clip"]))
    tokens = reward.tokenizer([long_prompt], truncation=True, max_length=77)
    assert len(tokens.input_ids[0]) == 77 and tokens.input_ids[0][-1] == reward.tokenizer.eos_token_id
    expected, _ = _direct_clip_cosine(tiny_paths["clip"], image, long_prompt)
    with torch.no_grad():
        assert float(reward.score(x, [long_prompt])) == pytest.approx(100 * expected, abs=1e-3)


def test_hps_is_100_cosine_on_a_padded_image(tiny_paths: dict[str, Path]) -> None:
    reward = load_reward("hpsv2.1", path=str(tiny_paths["hpsv2.1"]))
    assert reward.transform.mode == "pad" and reward.scale == 100.0
    _, x = _pil_and_tensor(16, 32, seed=3)
    # Long side 32 → already that wide; the 16 rows are centred between 8 black rows above and below.
    padded = torch.zeros(1, 3, 32, 32)
    padded[..., 8:24, :] = x
    with torch.no_grad():
        e_img = F.normalize(reward.model.get_image_features(pixel_values=ImageTransform(32, clamp=False)(padded))
                            .pooler_output, dim=-1)
        e_txt = reward.text_embeddings(["a red cat"])
        assert float(reward.score(x, ["a red cat"])) == pytest.approx(float(100 * (e_img * e_txt).sum()), abs=1e-3)


def test_hpsv2_and_hpsv21_are_different_checkpoints(tiny_paths: dict[str, Path], images, prompts) -> None:
    with torch.no_grad():
        v2 = load_reward("hpsv2", path=str(tiny_paths["hpsv2"])).score(images, prompts)
        v21 = load_reward("hpsv2.1", path=str(tiny_paths["hpsv2.1"])).score(images, prompts)
    assert not torch.allclose(v2, v21)


def test_aesthetic_is_the_mlp_on_the_normalised_embedding(tiny_paths: dict[str, Path]) -> None:
    """The folded head equals the original Sequential (Linear, Dropout, ..., Linear) in eval mode."""
    folder = tiny_paths["aesthetic"]
    image, x = _pil_and_tensor(32, 32, seed=4)
    model = CLIPModel.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder, use_fast=False)(images=image, return_tensors="pt").pixel_values
    state = torch.load(folder / "sac+logos+ava1-l14-linearMSE.pth", weights_only=True)
    widths = [state[f"layers.{i}.weight"].shape for i in (0, 2, 4, 6, 7)]
    mlp = torch.nn.Sequential(
        torch.nn.Linear(widths[0][1], widths[0][0]), torch.nn.Dropout(0.2), torch.nn.Linear(*widths[1][::-1]),
        torch.nn.Dropout(0.2), torch.nn.Linear(*widths[2][::-1]), torch.nn.Dropout(0.1),
        torch.nn.Linear(*widths[3][::-1]), torch.nn.Linear(*widths[4][::-1]),
    )
    mlp.load_state_dict({k[len("layers."):]: v for k, v in state.items()})
    with torch.no_grad():
        embedding = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        expected = mlp.eval()(embedding / embedding.norm(dim=-1, keepdim=True))
        got = load_reward("aesthetic", path=str(folder)).score(x, ["ignored"])
    assert float(got) == pytest.approx(float(expected), abs=1e-5)


def test_linear_head_folds_the_mlp() -> None:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, 6), torch.nn.Linear(6, 5), torch.nn.Linear(5, 4), torch.nn.Linear(4, 3),
              torch.nn.Linear(3, 1)]
    state = {f"layers.{i}.{k}": v for i, layer in zip((0, 2, 4, 6, 7), layers) for k, v in layer.state_dict().items()}
    x = torch.randn(7, 8)
    expected = x
    for layer in layers:
        expected = layer(expected)
    torch.testing.assert_close(LinearHead.from_mlp_state_dict(state)(x), expected[:, 0].detach(), atol=1e-5, rtol=1e-5)


def test_imagereward_tokens_and_standardisation(tiny_paths: dict[str, Path]) -> None:
    reward = load_reward("imagereward", path=str(tiny_paths["imagereward"]))
    assert isinstance(reward, ImageReward)
    ids, mask = reward.tokens(["a cat", "an extremely long prompt that goes on and on past the limit"])
    assert ids.shape == (2, 35) and mask.shape == (2, 35)
    assert int(ids[0, 0]) == reward.tokenizer.cls_token_id and int(mask[0].sum()) == 2 + 4  # [CLS] a c ##a ##t [SEP]
    assert int(mask[1].sum()) == 35 and int(ids[1, -1]) == reward.tokenizer.sep_token_id
    _, x = _pil_and_tensor(32, 32, seed=5)
    with torch.no_grad():
        hidden = reward.text(input_ids=ids[:1], attention_mask=mask[:1],
                             encoder_hidden_states=reward.vision(pixel_values=reward.transform(x)).last_hidden_state)
        raw = hidden.last_hidden_state[:, 0] @ reward.head.weight[0] + reward.head.bias
        expected = (raw - 0.16717362830052426) / 1.0333394966054072
        assert float(reward.score(x, ["a cat"])) == pytest.approx(float(expected), abs=1e-5)


def test_text_cache_is_bounded_and_cleared_on_move(tiny_paths: dict[str, Path]) -> None:
    reward = load_reward("clip", path=str(tiny_paths["clip"]))
    reward.text_cache.capacity = 2
    first = reward.text_embeddings(["a", "b", "c"])
    assert list(reward.text_cache.entries) == ["b", "c"]
    torch.testing.assert_close(reward.text_embeddings(["a"])[0], first[0])
    reward.to(torch.float64)
    assert not reward.text_cache.entries


def test_text_embedding_bits_do_not_depend_on_batch_partners(tiny_paths: dict[str, Path]) -> None:
    """A resumed run refills the cache beside other prompts: the entry must be bit-identical."""
    reward = load_reward("pickscore", path=str(tiny_paths["pickscore"]))
    short, long = "a cat", "an oil painting of a lighthouse at dusk, studio lighting, very detailed"
    beside_long = reward.text_embeddings([short, long])[0]
    reward.text_cache.clear()
    beside_short = reward.text_embeddings(["a dog", short])[1]
    reward.text_cache.clear()
    assert torch.equal(beside_long, beside_short)
    assert torch.equal(beside_long, reward.text_embeddings([short])[0])


def test_hps_converted_folder_loads_like_the_checkpoint(
    tiny_paths: dict[str, Path], tmp_path: Path, images, prompts
) -> None:
    """Converting once (save_pretrained + tokenizer + preprocessor config) gives the same scores."""
    original = load_reward("hpsv2", path=str(tiny_paths["hpsv2"]))
    original.model.save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((tiny_paths["hpsv2"] / name).read_bytes())
    converted = load_reward("hpsv2", path=str(tmp_path))
    assert converted.transform == original.transform
    with torch.no_grad():
        torch.testing.assert_close(converted.score(images, prompts), original.score(images, prompts))
