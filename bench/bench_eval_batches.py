"""How much a per-image score depends on the other images of its batch: every reward metric of
`distar eval` (tiny random models), the same images scored in batches of several sizes and orders.

    OMP_NUM_THREADS=1 python bench/bench_eval_batches.py [--images 24] [--threads 1]

Scores the images (random uint8 PNG-like tensors, seeded) one at a time, then in batches of 2, 3, 5, 8
and all at once, in the given and in a shuffled order, and prints for each metric the largest
relative difference |s - s₁| / |s₁| from the one-at-a-time score, the largest absolute one next to
the scores' typical size (mean |s₁|), and how many scores differ at all. Then the same with the
batches filled to their size as `distar eval` scores them (``distar.eval.suite._scores``): for each
batch size, how many scores differ between the in-order and the shuffled makeups, and by how much.
"""

from __future__ import annotations

import argparse
import random

import torch

from distar.eval.metrics import REWARD_NAMES, evaluation_inputs, metric_loaders
from distar.eval.suite import _scores
from distar.runtime import environment


def scores(
    reward, images: torch.Tensor, prompts: list[str], order: list[int], batch: int, filled: bool = False
) -> torch.Tensor:
    """Scores of ``images`` in batches of ``batch`` taken in ``order`` (``filled``: as `distar eval`
    scores them), put back in image order."""
    out = torch.empty(len(order), dtype=torch.float64)
    for start in range(0, len(order), batch):
        chosen = order[start : start + batch]
        texts = [prompts[i] for i in chosen]
        with torch.no_grad():
            if filled:
                values = _scores(reward, images[chosen], texts, batch, torch.device("cpu"))
            else:
                values = reward.score(evaluation_inputs(images[chosen], reward), texts)
        out[chosen] = values.double().cpu()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 64, 64), generator=generator).float() / 255
    prompts = [f"a photo of thing number {i}" for i in range(args.images)]
    shuffled = list(range(args.images))
    random.Random(0).shuffle(shuffled)
    print(environment())
    print(f"{args.images} images, {args.threads} thread(s); batches 2, 3, 5, 8, {args.images}, in order and shuffled")
    for loader in metric_loaders(REWARD_NAMES, paths={name: "tiny" for name in REWARD_NAMES}):
        reward = loader.load()
        alone = scores(reward, images, prompts, list(range(args.images)), 1)
        worst, largest, differing = 0.0, 0.0, 0
        for batch in (2, 3, 5, 8, args.images):
            for order in (list(range(args.images)), shuffled):
                other = scores(reward, images, prompts, order, batch)
                relative = ((other - alone).abs() / alone.abs().clamp_min(1e-30)).max().item()
                worst, differing = max(worst, relative), max(differing, int((other != alone).sum()))
                largest = max(largest, (other - alone).abs().max().item())
        filled, filled_worst = 0, 0.0
        for batch in (2, 3, 5, 8, args.images):
            first = scores(reward, images, prompts, list(range(args.images)), batch, True)
            second = scores(reward, images, prompts, shuffled, batch, True)
            filled = max(filled, int((first != second).sum()))
            filled_worst = max(filled_worst, ((first - second).abs() / first.abs().clamp_min(1e-30)).max().item())
        print(
            f"{loader.name:12s} largest relative difference {worst:.2e}, absolute {largest:.2e} "
            f"(mean |score| {alone.abs().mean().item():.3g}); up to {differing}/{args.images} scores differ; "
            f"filled batches: {filled}/{args.images} differ between makeups (largest relative {filled_worst:.1e})"
        )


if __name__ == "__main__":
    main()
