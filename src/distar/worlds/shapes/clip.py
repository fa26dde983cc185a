"""The world's CLIP-like models (transformers ``CLIPModel``, 32-px images) and how they are trained.

- the **CLIP analogue**: trained contrastively on rendered images and prompts that describe them.
  Several prompts in a batch can be true of one image ("a circle" and "a red circle" of a red
  circle), so the InfoNCE targets are spread uniformly over every prompt (image) in the batch that is
  consistent with the image (prompt) by the renderer's ground truth (multi-positive CLIP loss).
- the **PickScore analogue**: the CLIP analogue fine-tuned on simulated human choices with the
  Bradley–Terry loss −log σ(s (cos_A − cos_B)) of the chosen image, s = exp(logit_scale)
  (as PickScore fine-tunes CLIP-H on Pick-a-Pic; the loss is :mod:`distar.rewards.preference`'s, which
  ``distar rewards train`` minimises too).

Both are saved as ``CLIPModel`` folders with the tokenizer and a ``preprocessor_config.json`` for
32-px images, so :class:`distar.rewards.clip.PickScore` loads them unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from distar.config import field
from distar.fit import Log, TrainLoop, fit
from distar.io import to_uint8, write_atomic
from distar.rewards.preference import bradley_terry_loss
from distar.rewards.preference import preference_logits as log_odds
from distar.rewards.preprocess import OPENAI_MEAN, OPENAI_STD, ImageTransform
from distar.worlds.shapes.data import SceneSampler, consistency, contrast, describe, render_batch
from distar.worlds.shapes.grammar import IMAGE_SIZE
from distar.worlds.shapes.utility import TrueUtility, UtilityWeights, degrade, simulate_choices

#: Token budget of a prompt (the longest grammar prompt is 11 words + start/end tokens).
MAX_LENGTH = 20
TRANSFORM = ImageTransform(size=IMAGE_SIZE)


@dataclasses.dataclass
class ClipArch:
    """Size of the CLIP-like models (both towers share width and depth)."""

    width: int = field(64, help="hidden size of both towers (the text width is the UNet's cross-attention dim)")
    layers: int = field(3, help="transformer layers per tower")
    heads: int = field(4, help="attention heads")
    patch_size: int = field(4, help="ViT patch size in pixels (32-px images)")
    projection_dim: int = field(64, help="joint embedding size")


@dataclasses.dataclass
class ClipLoop(TrainLoop):
    """Contrastive training of the CLIP analogue."""

    hard_negatives: int = field(
        2, help="extra prompts per image that describe it with one attribute wrong (the first: its shape); "
        "0 = in-batch negatives only"
    )


def new_clip(vocab_size: int, arch: ClipArch, seed: int) -> CLIPModel:
    """A randomly initialised CLIPModel for 32-px images and ``vocab_size`` tokens (ids 512/513 = start/end)."""
    common = dict(
        hidden_size=arch.width,
        intermediate_size=4 * arch.width,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, max_position_embeddings=MAX_LENGTH, bos_token_id=512, eos_token_id=513,
            pad_token_id=513, **common,
        ),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=arch.patch_size, **common),
        projection_dim=arch.projection_dim,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def save_clip(model: CLIPModel, tokenizer: CLIPTokenizer, directory: str | Path) -> Path:
    """Write a CLIPModel folder: safetensors weights, tokenizer, 32-px ``preprocessor_config.json``."""
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(OPENAI_MEAN),
        image_std=list(OPENAI_STD),
    ).save_pretrained(directory)
    return directory


def image_embeddings(model: CLIPModel, images: Tensor) -> Tensor:
    """(B, D) unit-norm embeddings of images (B, 3, 32, 32) in [0, 1]."""
    pooled = model.vision_model(pixel_values=TRANSFORM(images)).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)


def text_embeddings(model: CLIPModel, tokenizer: CLIPTokenizer, prompts: Sequence[str]) -> Tensor:
    """(B, D) unit-norm embeddings of prompts."""
    device = model.text_projection.weight.device
    tokens = tokenizer(list(prompts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    pooled = model.text_model(
        input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
    ).pooler_output
    return F.normalize(model.text_projection(pooled), dim=-1)


def train_clip(model: CLIPModel, tokenizer: CLIPTokenizer, loop: ClipLoop, log: Log) -> None:
    """Multi-positive contrastive training on rendered scenes, with hard negatives (module docstring)."""
    sampler = SceneSampler(loop.seed)
    text_rng = random.Random(loop.seed + 1)

    def step_loss() -> dict[str, Tensor]:
        _, images, scenes = sampler.batch(loop.batch_size)
        specs = [describe(scene, text_rng) for scene in scenes]
        negatives = [
            contrast(spec, text_rng, "shape" if k == 0 else None) for k in range(loop.hard_negatives) for spec in specs
        ]
        texts = specs + negatives
        # positives[i, j]: prompt j is true of image i (always so for j = i, never for i's own negatives).
        positives = consistency(texts, scenes).float()
        logits = model.logit_scale.exp() * image_embeddings(model, images) @ text_embeddings(
            model, tokenizer, [s.prompt() for s in texts]
        ).T
        image_to_text = -(F.log_softmax(logits, 1) * positives / positives.sum(1, keepdim=True)).sum(1).mean()
        described = logits[:, : len(specs)]  # the images compete for each describing prompt
        weights = positives[:, : len(specs)]
        text_to_image = -(F.log_softmax(described, 0) * weights / weights.sum(0, keepdim=True)).sum(0).mean()
        return {"loss": (image_to_text + text_to_image) / 2, "logit_scale": model.logit_scale.exp()}

    fit(model, loop, step_loss, log)


@dataclasses.dataclass
class PreferencePairs:
    """Pairs of images of one prompt with simulated human choices."""

    prompts: list[str]
    image_a: Tensor
    image_b: Tensor
    #: true utility of each image, (N,)
    utility_a: Tensor
    utility_b: Tensor
    #: 1.0 where the simulated human chose A
    choice: Tensor


def preference_pairs(n: int, seed: int, weights: UtilityWeights) -> PreferencePairs:
    """``n`` prompts, two independent renders each, both passed through :func:`~.utility.degrade`,
    judged by the true utility and a Bradley–Terry choice."""
    sampler = SceneSampler(seed)
    generator = torch.Generator().manual_seed(seed)
    specs = sampler.specs(n)
    prompts = [s.prompt() for s in specs]
    images = [degrade(render_batch(specs, sampler.np_rng)[0], generator) for _ in range(2)]
    utility = TrueUtility(weights)
    with torch.no_grad():
        u_a, u_b = (utility.score(x, prompts) for x in images)
    choice = simulate_choices(u_a, u_b, weights.temperature, generator)
    return PreferencePairs(prompts, images[0], images[1], u_a, u_b, choice)


def reward_training_pairs(loop: TrainLoop, weights: UtilityWeights, step: int) -> PreferencePairs:
    """The pairs :func:`train_reward` trains on at ``step`` (fresh ones each step, from the loop's seed)."""
    return preference_pairs(loop.batch_size, loop.seed * 100003 + step, weights)


def export_choices(pairs: Iterable[PreferencePairs], folder: str | Path, name: str) -> Path:
    """Write simulated choices as ``folder/name`` in the JSONL layout of :mod:`distar.rewards.preference`
    (label: the chosen image's index), the images as PNG under ``folder/images/<name stem>/``."""
    folder = Path(folder)
    images = folder / "images" / Path(name).stem
    images.mkdir(parents=True, exist_ok=True)
    lines, index = [], 0
    for batch in pairs:
        for prompt, a, b, chose_a in zip(batch.prompts, batch.image_a, batch.image_b, batch.choice.tolist()):
            files = [images / f"{index:06d}_{side}.png" for side in "ab"]
            for file, image in zip(files, (a, b)):
                Image.fromarray(to_uint8(image)).save(file)
            record = {"prompt": prompt, "image_0": files[0].relative_to(folder).as_posix(),
                      "image_1": files[1].relative_to(folder).as_posix(), "label": 0 if chose_a else 1}
            lines.append(json.dumps(record))
            index += 1
    write_atomic(folder / name, ("\n".join(lines) + "\n").encode())
    return folder / name


def preference_logits(model: CLIPModel, tokenizer: CLIPTokenizer, pairs: PreferencePairs) -> Tensor:
    """s (cos_A − cos_B) per pair: the model's log-odds that A is preferred."""
    text = text_embeddings(model, tokenizer, pairs.prompts)
    cos_a = (image_embeddings(model, pairs.image_a) * text).sum(-1)
    cos_b = (image_embeddings(model, pairs.image_b) * text).sum(-1)
    return log_odds(model.logit_scale, cos_a, cos_b)


def train_reward(
    model: CLIPModel, tokenizer: CLIPTokenizer, loop: TrainLoop, weights: UtilityWeights, log: Log
) -> None:
    """Bradley–Terry fine-tuning on freshly simulated pairs each step (module docstring)."""
    counter = iter(range(10**9))

    def step_loss() -> dict[str, Tensor]:
        pairs = reward_training_pairs(loop, weights, next(counter))
        logits = preference_logits(model, tokenizer, pairs)
        loss = bradley_terry_loss(logits, pairs.choice)
        accuracy = ((logits > 0).float() == pairs.choice).float().mean()
        return {"loss": loss, "accuracy": accuracy}

    fit(model, loop, step_loss, log)


@torch.no_grad()
def pairwise_accuracy(model: CLIPModel, tokenizer: CLIPTokenizer, pairs: PreferencePairs) -> dict[str, float]:
    """Agreement of the model's preferred image with the simulated choices and with the noiseless
    utility ordering; the utility's own agreement with the simulated choices is the ceiling."""
    model_prefers_a = preference_logits(model, tokenizer, pairs) > 0
    utility_prefers_a = pairs.utility_a > pairs.utility_b
    chose_a = pairs.choice > 0.5
    return {
        "accuracy_vs_choices": float((model_prefers_a == chose_a).float().mean()),
        "accuracy_vs_true_utility": float((model_prefers_a == utility_prefers_a).float().mean()),
        "true_utility_vs_choices": float((utility_prefers_a == chose_a).float().mean()),
    }
