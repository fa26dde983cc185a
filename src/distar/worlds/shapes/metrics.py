"""Measurements that only this world can make: attribute alignment and diversity of what prompts leave open.

Both rest on an attribute classifier (:class:`AttributeClassifier`), a small CNN trained by the
build on rendered scenes with the renderer's ground truth as labels (one softmax head per
attribute; the position head only on single shapes). Its accuracy on held-out renders is in the
build record.

- **alignment** (:class:`AlignmentScore`): the fraction of the attributes a prompt names (shape and
  count always, colour/size/position/background when named) that the classifier reads back, in [0, 1].
- **open-attribute diversity** (:func:`open_attribute_diversity`): for each prompt and each attribute
  it leaves open, the entropy of the classified values across seeds divided by
  log(min(number of values, number of seeds)) (1 = as spread as possible, 0 = always the same
  value); the mean over (prompt, attribute).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import CLIPModel

from distar.config import field
from distar.fit import TrainLoop, fit
from distar.rewards.base import Reward
from distar.worlds.shapes.clip import TRANSFORM
from distar.worlds.shapes.data import SceneSampler
from distar.worlds.shapes.grammar import ATTRIBUTE_VALUES, OPTIONAL_ATTRIBUTES, parse_prompt
from distar.worlds.shapes.render import Scene


@dataclasses.dataclass
class JudgeLoop(TrainLoop):
    """Supervised training of the attribute classifier on renders."""

    width: int = field(32, help="channels of the first convolution (doubled after it)")


class AttributeClassifier(nn.Module):
    """Images (B, 3, 32, 32) in [0, 1] → logits per attribute (values in ``ATTRIBUTE_VALUES`` order)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = width

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(), nn.MaxPool2d(2))

        # 32 → 16 → 8 → 4 px; flattening (not pooling) the 4×4 map keeps where things are.
        self.features = nn.Sequential(
            block(3, width), block(width, 2 * width), block(2 * width, 2 * width), nn.Flatten(),
            nn.Linear(2 * width * 16, 128), nn.SiLU(),
        )
        self.heads = nn.ModuleDict({a: nn.Linear(128, len(v)) for a, v in ATTRIBUTE_VALUES.items()})

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        h = self.features(images.float() * 2 - 1)
        return {a: head(h) for a, head in self.heads.items()}

    @torch.no_grad()
    def read(self, images: Tensor) -> dict[str, list[str]]:
        """The most likely value of every attribute for each image (position: as if a single shape)."""
        logits = self(images)
        return {a: [ATTRIBUTE_VALUES[a][i] for i in logits[a].argmax(-1).tolist()] for a in logits}

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"width": self.width, "attributes": ATTRIBUTE_VALUES}, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "AttributeClassifier":
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        if config["attributes"] != {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}:
            raise ValueError(f"{directory}: classifier was trained on a different grammar")
        model = cls(config["width"])
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return model.eval().requires_grad_(False)


def scene_labels(scenes: Sequence[Scene]) -> dict[str, Tensor]:
    """Class indices per attribute; −100 (ignored) for the position of a group."""
    labels: dict[str, list[int]] = defaultdict(list)
    for scene in scenes:
        truth = scene.spec().attributes()
        for a, values in ATTRIBUTE_VALUES.items():
            labels[a].append(values.index(truth[a]) if a in truth else -100)
    return {a: torch.tensor(v) for a, v in labels.items()}


def train_classifier(model: AttributeClassifier, loop: JudgeLoop, log: Callable[[int, dict[str, float]], None]) -> None:
    """Cross-entropy on every attribute head, fresh renders each step."""
    sampler = SceneSampler(loop.seed)

    def step_loss() -> dict[str, Tensor]:
        _, images, scenes = sampler.batch(loop.batch_size)
        logits, labels = model(images), scene_labels(scenes)
        terms = {a: F.cross_entropy(logits[a], labels[a], ignore_index=-100) for a in logits}
        return {"loss": sum(terms.values()), **terms}

    fit(model, loop, step_loss, log)


def classifier_accuracy(model: AttributeClassifier, n: int, seed: int) -> dict[str, float]:
    """Accuracy per attribute on ``n`` fresh renders (position on single shapes only)."""
    _, images, scenes = SceneSampler(seed).batch(n)
    read, labels = model.read(images), scene_labels(scenes)
    out = {}
    for a, values in ATTRIBUTE_VALUES.items():
        kept = [(r, values[t]) for r, t in zip(read[a], labels[a].tolist()) if t >= 0]
        out[a] = sum(r == t for r, t in kept) / len(kept)
    return out


class AlignmentScore(Reward):
    """Per image: the fraction of the prompt's named attributes the classifier reads back (no gradient).

    With ``attribute``, only that attribute: 1 or 0 where the prompt names it, NaN where it does not.
    Built without a classifier (as the monitor's metric plugin
    ``distar.worlds.shapes.metrics:AlignmentScore``), it loads the world's shipped one (or ``models``'s).
    """

    def __init__(
        self, classifier: AttributeClassifier | None = None, attribute: str | None = None, models: str | None = None
    ) -> None:
        super().__init__()
        if attribute is not None and attribute not in ATTRIBUTE_VALUES:
            raise ValueError(f"attribute must be one of {', '.join(ATTRIBUTE_VALUES)}, got {attribute!r}")
        if classifier is None:
            from distar.worlds.shapes.assets import asset

            classifier = AttributeClassifier.load(asset("judge", models))
        self.classifier, self.attribute = classifier, attribute
        self.name = f"align_{attribute}" if attribute else "alignment"

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        read = self.classifier.read(images)
        named = [parse_prompt(p).attributes() for p in prompts]
        if self.attribute is not None:
            a = self.attribute
            values = [float(read[a][i] == attrs[a]) if a in attrs else math.nan for i, attrs in enumerate(named)]
        else:
            values = [sum(read[a][i] == v for a, v in attrs.items()) / len(attrs) for i, attrs in enumerate(named)]
        return torch.tensor(values, device=images.device)


@torch.no_grad()
def attribute_alignment(classifier: AttributeClassifier, images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """Per attribute: the fraction of images whose prompt names it for which the classifier reads it back."""
    read = classifier.read(images)
    hits: dict[str, list[bool]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        for a, v in parse_prompt(prompt).attributes().items():
            hits[a].append(read[a][i] == v)
    return {a: sum(hits[a]) / len(hits[a]) for a in ATTRIBUTE_VALUES if hits[a]}


def open_attribute_diversity(
    classifier: AttributeClassifier, images: Tensor, prompts: Sequence[str]
) -> dict[str, float]:
    """Normalised entropy of classified open attributes across the images of each prompt (module docstring).

    ``images[i]`` was generated for ``prompts[i]``; images of the same prompt string form one group.
    Returns the mean over (prompt, attribute) (``open_diversity``) and the mean per attribute.
    """
    read = classifier.read(images)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p].append(i)
    per_attribute: dict[str, list[float]] = defaultdict(list)
    for prompt, rows in groups.items():
        if len(rows) < 2:
            continue
        spec = parse_prompt(prompt)  # the optional attributes it leaves open (position only for single shapes):
        for attribute in [a for a in OPTIONAL_ATTRIBUTES if getattr(spec, a) is None and (a != "position" or spec.count == 1)]:
            counts = Counter(read[attribute][i] for i in rows)
            entropy = -sum(c / len(rows) * math.log(c / len(rows)) for c in counts.values())
            per_attribute[attribute].append(entropy / math.log(min(len(ATTRIBUTE_VALUES[attribute]), len(rows))))
    flat = [v for vs in per_attribute.values() for v in vs]
    means = {f"open_{a}_diversity": sum(v) / len(v) for a, v in per_attribute.items()}
    return {"open_diversity": sum(flat) / len(flat) if flat else float("nan"), **means}


class ImageFeatures(nn.Module):
    """The CLIP analogue's pooled image features (64-d) as an FID feature extractor.

    Accepts uint8 images in [0, 255] (torchmetrics' convention) or floats in [0, 1].
    """

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.num_features = model.config.vision_config.hidden_size

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return self.model.vision_model(pixel_values=TRANSFORM(x)).pooler_output
