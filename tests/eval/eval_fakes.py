"""Cheap stand-ins for the evaluation tests: a deterministic image model and a counting metric."""

from __future__ import annotations

import zlib
from typing import Sequence

import torch
from torch import Tensor

from distar.rewards.base import Reward


class FakeModel:
    """A cheap deterministic ImageModel: each image is noise seeded by (prompt, seed).

    ``fail_on`` prompts raise, ``nan_on`` prompts give non-finite pixels; ``calls`` logs every
    (prompt, seed) generated.
    """

    def __init__(self, name: str, size: int = 8, fail_on: Sequence[str] = (), nan_on: Sequence[str] = ()) -> None:
        self.name = name
        self.size = size
        self.fail_on = set(fail_on)
        self.nan_on = set(nan_on)
        self.calls: list[tuple[str, int]] = []

    def generate_images(self, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        if self.fail_on.intersection(prompts):
            raise RuntimeError("cannot draw that")
        self.calls.extend(zip(prompts, seeds))
        images = []
        for prompt, seed in zip(prompts, seeds):
            gen = torch.Generator().manual_seed(zlib.crc32(f"{self.name}|{prompt}".encode()) + seed)
            image = torch.rand(3, self.size, self.size, generator=gen)
            images.append(image * float("nan") if prompt in self.nan_on else image)
        return torch.stack(images)


class Brightness(Reward):
    """Mean pixel value; counts the images it scored (the copies that fill a batch once each)."""

    name = "aesthetic"

    def __init__(self) -> None:
        super().__init__()
        self.scored = 0

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        means = images.mean(dim=(1, 2, 3))
        self.scored += len(set(zip(prompts, means.tolist())))
        return means
