"""The fake-tensor memory estimate (distar.train.memory) against real runs of tiny models on CPU."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distar.config import load_config
from distar.train import TrainConfig
from distar.train.memory import (
    AdamW8bitStandIn,
    AllocationTracker,
    cuda_float32_autocast,
    estimate_iteration_memory,
    fake_tensors,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_estimate_is_the_peak_a_real_run_reaches():
    """The one-GPU layout in miniature (shared LoRA assistant, checkpointing, EMA, tiny PickScore) with
    bf16 autocast, 8-bit Adam and the CUDA device model: fake and real tensors allocate alike."""
    config = load_config(TrainConfig, CONFIGS / "tiny_sdxl.yaml", [
        "loop.assistant_steps=1", "loop.mixed_precision=bf16", "optim.use_8bit_adam=true",
    ])
    predicted = estimate_iteration_memory(config)
    measured = estimate_iteration_memory(config, fake=False)
    assert (predicted.peak, predicted.peak_phase, predicted.resident, predicted.warm_up_peak) == (
        measured.peak, measured.peak_phase, measured.resident, measured.warm_up_peak
    )
    assert predicted.peak % 512 == 0 and predicted.peak > predicted.resident > 0


def test_the_estimate_is_within_one_percent_of_the_cpu_allocators_peak():
    config = load_config(TrainConfig, CONFIGS / "tiny_sd.yaml", [
        "rewards=[]", "objective.reward_scale=0", "loop.assistant_steps=1", "ema.decay=0",
    ])
    predicted = estimate_iteration_memory(config, device_model="cpu")
    measured = estimate_iteration_memory(config, fake=False, device_model="cpu")
    assert measured.allocator_peak == pytest.approx(predicted.peak, rel=0.01)


def test_the_tracker_follows_storages_until_they_are_freed():
    with AllocationTracker("cpu") as tracker:
        a = torch.empty(1000)
        b = a[10:]  # a view: no new storage
        c = torch.empty(250, dtype=torch.float64)
        assert tracker.live == 6000 and b.numel() == 990
        del a, b
        assert tracker.live == 2000 and tracker.peak == 6000
        tracker.reset_peak()
        del c
    assert tracker.live == 0 and tracker.peak == 2000


def test_fake_tensors_cast_move_and_copy_modules_and_assume_a_healthy_run():
    with fake_tensors():
        module = torch.nn.Linear(4, 4)
        module.to(torch.bfloat16).to("meta").to("cpu")
        out = copy.deepcopy(module)(torch.randn(2, 4, dtype=torch.bfloat16))
        assert out.shape == (2, 4) and module.weight.device.type == "cpu"
        assert bool(torch.isfinite(out).all()) and not bool(out.sum() > 0) and int(torch.randint(4, ())) == 0


def test_cuda_float32_list_applies_to_cpu_autocast_inside_the_block_only():
    x, w = torch.randn(2, 4, 3, 3), torch.randn(4, 4, 1, 1)

    def norm_dtype() -> torch.dtype:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.group_norm(F.conv2d(x, w), 2).dtype

    with cuda_float32_autocast():
        assert norm_dtype() == torch.float32
    assert norm_dtype() == torch.bfloat16


def test_8bit_stand_in_holds_the_states_of_bitsandbytes_blockwise_adamw():
    big, small = torch.nn.Parameter(torch.zeros(5000)), torch.nn.Parameter(torch.zeros(100))
    optimizer = AdamW8bitStandIn([big, small], TrainConfig().optim.generator)
    big.grad, small.grad = torch.ones_like(big), torch.ones_like(small)
    optimizer.step()
    nbytes = {id(p): sum(t.nbytes for t in optimizer.state[p].values()) for p in (big, small)}
    assert nbytes == {id(big): 2 * 5000 + 2 * 20 * 4, id(small): 2 * 100 * 4}
    assert torch.equal(big, torch.zeros(5000))  # weights untouched
