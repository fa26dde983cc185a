"""Batches of rendered scenes and the prompts that describe them (training data of every world model)."""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from distar.worlds.shapes.grammar import (
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    GROUP_SIZES,
    MENTION_PROBABILITY,
    OPTIONAL_ATTRIBUTES,
    POSITIONS,
    SHAPES,
    SIZES,
    Spec,
    parse_prompt,
    sample_spec,
)
from distar.worlds.shapes.render import Scene, render


def render_batch(specs: Sequence[Spec], rng: np.random.Generator) -> tuple[Tensor, list[Scene]]:
    """Images (B, 3, 32, 32) in [0, 1] and the ground truth of each."""
    images, scenes = zip(*(render(spec, rng) for spec in specs))
    return torch.from_numpy(np.stack(images)), list(scenes)


def render_prompts(prompts: Sequence[str], seeds: Sequence[int]) -> tuple[Tensor, list[Scene]]:
    """One render per (prompt, seed) pair, deterministic in the seed."""
    images, scenes = zip(*(render(parse_prompt(p), np.random.default_rng(s)) for p, s in zip(prompts, seeds)))
    return torch.from_numpy(np.stack(images)), list(scenes)


def describe(scene: Scene, rng: random.Random) -> Spec:
    """A random partial description of ``scene``: each optional attribute named as in the grammar."""
    full = scene.spec()
    named = {k: getattr(full, k) if rng.random() < MENTION_PROBABILITY[k] else None for k in OPTIONAL_ATTRIBUTES}
    return dataclasses.replace(full, **named)


def contrast(spec: Spec, rng: random.Random, attribute: str | None = None) -> Spec:
    """A valid prompt that differs from ``spec`` in one attribute it names: ``attribute``, or a random one.

    The CLIP analogue's hard negatives: a description of the same scene with one word wrong ("a red
    square" for a red circle) teaches both towers the attributes that random negatives rarely contrast.
    """
    named = [a for a, v in dataclasses.asdict(spec).items() if v is not None]
    if attribute is None:
        attribute = rng.choice(named)
    elif attribute not in named:
        raise ValueError(f"{spec.prompt()!r} does not name {attribute}")
    current = getattr(spec, attribute)
    values = {
        "shape": SHAPES, "colour": [c for c in COLOURS if c != spec.background], "position": POSITIONS,
        "background": [b for b in BACKGROUNDS if b != spec.colour], "size": SIZES if spec.count == 1 else GROUP_SIZES,
    }  # fmt: skip
    if attribute in values:
        return dataclasses.replace(spec, **{attribute: rng.choice([v for v in values[attribute] if v != current])})
    count = rng.choice([c for c in COUNTS if c != current])
    size = spec.size if count == 1 or spec.size in (None, *GROUP_SIZES) else rng.choice(GROUP_SIZES)
    return dataclasses.replace(spec, count=count, size=size, position=spec.position if count == 1 else None)


_FIELDS = [f.name for f in dataclasses.fields(Spec)]


def _codes(specs: Sequence[Spec]) -> Tensor:
    """(N, fields) hashes of each attribute value; 0 where unspecified."""
    return torch.tensor([[hash(v) if v is not None else 0 for v in map(spec.__getattribute__, _FIELDS)] for spec in specs])


def consistency(specs: Sequence[Spec], scenes: Sequence[Scene]) -> Tensor:
    """(len(scenes), len(specs)) boolean: every attribute spec j names is true of scene i."""
    named, truth = _codes(specs), _codes([scene.spec() for scene in scenes])
    return ((named[None] == 0) | (named[None] == truth[:, None])).all(-1)


class SceneSampler:
    """Seeded stream of (prompt specs, images, scenes): prompts from the grammar, images rendered."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)

    def get_state(self) -> dict:
        """Where both random streams stand (for :meth:`set_state`)."""
        return {"python": self.rng.getstate(), "numpy": self.np_rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.rng.setstate(state["python"])
        self.np_rng.bit_generator.state = state["numpy"]

    def specs(self, n: int) -> list[Spec]:
        return [sample_spec(self.rng) for _ in range(n)]

    def batch(self, n: int) -> tuple[list[Spec], Tensor, list[Scene]]:
        specs = self.specs(n)
        images, scenes = render_batch(specs, self.np_rng)
        return specs, images, scenes
