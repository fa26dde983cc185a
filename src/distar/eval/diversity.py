"""Diversity: how different a model's images of one prompt are across seeds (or of one seed across prompts).

For a prompt c with images x_1..x_k (k ≥ 2 seeds) and unit-norm image features f_i = φ(x_i)/‖φ(x_i)‖:

    div(c) = 2 / (k (k − 1)) Σ_{i<j} (1 − f_iᵀ f_j)          (mean pairwise cosine distance, in [0, 2])

and the metric is the mean of div(c) over prompts. 0 means every seed gives the same image (mode
collapse); larger is more diverse. φ is a CLIP image encoder (default ``openai/clip-vit-large-patch14``)
or any injected callable; by name it is the image tower of the ``"clip"`` reward model
(:meth:`distar.rewards.clip.CLIPSimilarityReward.image_embeddings`). Values depend on φ: compare
models under the same feature model only.

``across="prompts"`` groups the other way, by seed: the mean pairwise distance between the images that
different prompts get from the same noise. A generator that draws one image whatever the prompt (the
collapse of a reward-hacked generator) scores 0 there too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_cosine_distance(features: Tensor) -> Tensor:
    """Mean of 1 − cos(f_i, f_j) over pairs i < j of features (k, D), k ≥ 2."""
    unit = F.normalize(features.float(), dim=-1)
    k = unit.shape[0]
    gram = unit @ unit.T
    upper = torch.triu_indices(k, k, offset=1, device=gram.device)
    return (1.0 - gram[upper[0], upper[1]]).mean()


class Diversity:
    """The diversity set metric: ``"diversity"`` across seeds (default) or ``"prompt_diversity"`` across
    prompts; ``features`` maps images to (B, D) features."""

    def __init__(self, features: Callable[[Tensor], Tensor], across: Literal["seeds", "prompts"] = "seeds") -> None:
        self.features, self.across = features, across
        self.name = "diversity" if across == "seeds" else "prompt_diversity"

    @torch.no_grad()
    def compute(self, batches: Iterable[tuple[Tensor, Sequence[dict]]]) -> dict[str, float]:
        """Group features by the records' prompt ``index`` (or ``seed``); groups of one image are left out."""
        key = "index" if self.across == "seeds" else "seed"
        groups: dict[int, list[Tensor]] = defaultdict(list)
        for images, records in batches:
            for feature, record in zip(self.features(images).cpu(), records):
                groups[record[key]].append(feature)
        values = [pairwise_cosine_distance(torch.stack(f)) for f in groups.values() if len(f) >= 2]
        if not values:
            need = "two seeds per prompt (--seeds 0 1 ...)" if self.across == "seeds" else "two prompts"
            raise ValueError(f"{self.name} needs at least {need}")
        count = "diversity_prompts" if self.across == "seeds" else "prompt_diversity_seeds"
        return {self.name: float(torch.stack(values).mean()), count: len(values)}
