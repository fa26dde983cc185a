"""Prompt batches for Algorithm 1: an endless, sharded, reproducible stream.

Epoch e is a permutation of all N prompts drawn from a generator seeded with ``seed + e`` (the same
on every process). Process r of R reads positions r, r + R, r + 2R, ... of it, truncated to
L = N // R prompts so every process has the same epoch length (at most R − 1 prompts of an epoch
are left out, different ones each shuffled epoch). The whole state is one integer, ``position``:
the number of prompts this process has consumed, which checkpoints store to resume exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch


class PromptStream:
    """Endless batches of prompts for one process."""

    def __init__(
        self,
        prompts: Sequence[str],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if len(prompts) < world_size:
            raise ValueError(f"{len(prompts)} prompt(s) cannot be shared by {world_size} processes")
        self.prompts = list(prompts)
        self.batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.shard_len = len(self.prompts) // world_size
        self.position = 0
        self._epoch: int | None = None
        self._shard: list[int] = []

    def _indices(self, epoch: int) -> list[int]:
        """This process's prompt indices for ``epoch`` (cached for the current epoch)."""
        if epoch != self._epoch:
            n = len(self.prompts)
            if self.shuffle:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
            else:
                order = torch.arange(n)
            self._shard = order[self.rank :: self.world_size][: self.shard_len].tolist()
            self._epoch = epoch
        return self._shard

    def next_batch(self) -> list[str]:
        """The next ``batch_size`` prompts (crossing into the next epoch when one runs out)."""
        batch = []
        for p in range(self.position, self.position + self.batch_size):
            epoch, offset = divmod(p, self.shard_len)
            batch.append(self.prompts[self._indices(epoch)[offset]])
        self.position += self.batch_size
        return batch

    @property
    def epoch(self) -> int:
        return self.position // self.shard_len

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])
