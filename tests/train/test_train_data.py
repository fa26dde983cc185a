"""PromptStream: per-process shards, deterministic seed + epoch shuffling, exact position restore."""

from __future__ import annotations

import pytest

from distar.train.data import PromptStream

PROMPTS = [f"p{i}" for i in range(11)]


def take(stream: PromptStream, batches: int) -> list[str]:
    return [p for _ in range(batches) for p in stream.next_batch()]


def test_shards_are_disjoint_and_equal_within_an_epoch():
    world = 3
    shard_len = len(PROMPTS) // world
    streams = [PromptStream(PROMPTS, 1, seed=5, rank=r, world_size=world) for r in range(world)]
    shards = [take(s, shard_len) for s in streams]
    seen = [p for shard in shards for p in shard]
    assert len(seen) == len(set(seen)) == world * shard_len  # no prompt served twice in an epoch
    assert all(len(shard) == shard_len for shard in shards)


def test_same_seed_same_order_and_epochs_reshuffle():
    a = take(PromptStream(PROMPTS, 2, seed=1), 11)  # 22 prompts: two epochs
    b = take(PromptStream(PROMPTS, 2, seed=1), 11)
    assert a == b
    assert sorted(a[:11]) == sorted(a[11:]) == sorted(PROMPTS)  # each epoch is a permutation
    assert a[:11] != a[11:]  # reshuffled with seed + epoch
    assert take(PromptStream(PROMPTS, 2, seed=2), 11) != a


def test_no_shuffle_keeps_file_order():
    assert take(PromptStream(PROMPTS, 3, shuffle=False), 4) == PROMPTS + PROMPTS[:1]


def test_resume_from_position():
    full = PromptStream(PROMPTS, 3, seed=7, rank=1, world_size=2)
    expected = take(full, 6)
    first = PromptStream(PROMPTS, 3, seed=7, rank=1, world_size=2)
    head = take(first, 2)
    resumed = PromptStream(PROMPTS, 3, seed=7, rank=1, world_size=2)
    resumed.load_state_dict(first.state_dict())
    assert head + take(resumed, 4) == expected


def test_batches_longer_than_the_shard_wrap_into_the_next_epoch():
    stream = PromptStream(["a", "b"], 5, seed=0)
    batch = stream.next_batch()
    assert len(batch) == 5 and set(batch) == {"a", "b"} and stream.epoch == 2


def test_too_few_prompts_for_the_processes():
    with pytest.raises(ValueError, match="1 prompt\\(s\\) cannot be shared by 2 processes"):
        PromptStream(["only"], 1, world_size=2)
