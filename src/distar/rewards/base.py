"""The reward interface r(x0, c) of Eq. (3.1) and weighted sums of rewards."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn


class Reward(nn.Module, ABC):
    """A frozen, differentiable reward model.

    ``score(images, prompts)`` takes images (B, 3, H, W) in [0, 1] (any size; preprocessing is done
    in torch) and B prompts, and returns (B,) scores on the model's documented scale. Gradients flow
    to ``images``; the model's own parameters are frozen. Wrap calls in ``torch.no_grad()`` for
    evaluation.
    """

    #: Short name used in configs, tables and logs.
    name: str = "reward"

    def __init__(self) -> None:
        super().__init__()

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (cpu for a reward without weights)."""
        tensor = next(self._tensors(), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point weights (float32 for a reward without weights)."""
        tensor = next((t for t in self._tensors() if t.is_floating_point()), None)
        return tensor.dtype if tensor is not None else torch.float32

    def _tensors(self) -> Iterator[Tensor]:
        yield from self.parameters()
        yield from self.buffers()

    def freeze(self) -> "Reward":
        """Put the model in eval mode (dropout/drop-path off) and stop parameter gradients."""
        self.eval()
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Reward":
        # Reward models stay in eval mode: a trainer calling .train() must not enable dropout.
        return super().train(False)

    @abstractmethod
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """(B,) rewards for images (B, 3, H, W) in [0, 1]."""

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.score(images, prompts)


class WeightedReward(Reward):
    """r = Σ_k w_k r_k, e.g. PickScore × 100 + HPSv2.1 × 10.

    ``names`` are the terms' reward names, numbered ``_1``, ``_2``, ... where a name repeats."""

    name = "weighted"

    def __init__(self, terms: Sequence[tuple[float, Reward]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedReward needs at least one (weight, reward) term")
        self.weights = [float(w) for w, _ in terms]
        self.rewards = nn.ModuleList(r for _, r in terms)
        raw = [r.name for r in self.rewards]
        self.names = [n if raw.count(n) == 1 else f"{n}_{raw[: i + 1].count(n)}" for i, n in enumerate(raw)]

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.score_with_terms(images, prompts)[0]

    def score_with_terms(self, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """The (B,) weighted reward and each term's unweighted (B,) score keyed by :attr:`names`, from one
        evaluation of each term (the trainer logs the terms, ``generator/reward/<name>``)."""
        terms = {name: r.score(images, prompts) for name, r in zip(self.names, self.rewards)}
        return sum(w * t for w, t in zip(self.weights, terms.values())), terms
