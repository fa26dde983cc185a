"""FSDP2 (loop.fsdp) on two CPU processes (torchrun, gloo): the networks are sharded, two processes
train as one at the doubled batch, a killed rank resumes exactly, and the documented launch works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from fsdp_worker import NAN_STEP, NaNAtStep
from train_helpers import PROMPTS, GaussianBackend, make_config

from distar.train import Trainer
from distar.train import checkpoint as ckpt
from distar.train.tracking import TIMING_KEYS

WORKER = Path(__file__).with_name("fsdp_worker.py")
ROOT = Path(__file__).resolve().parents[2]
#: Four steps, a checkpoint after each, gradients clipped to norm 1, EMA and its sample grids; loop.fsdp.
SECTIONS = {
    "loop": {"max_steps": 4, "fsdp": True},
    "optim": {"generator": {"lr": 1e-2, "max_grad_norm": 1.0}, "assistant": {"lr": 1e-2, "max_grad_norm": 1.0}},
    "logging": {"every": 1},
    "checkpointing": {"every": 1},
    "ema": {"decay": 0.9},
    "sampling": {"every": 2, "seeds": [0, 1]},
}
WEIGHT_FILES = (ckpt.GENERATOR_FILE, ckpt.GENERATOR_EMA_FILE, ckpt.ASSISTANT_FILE)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """Two local CPU processes, one thread each."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)


def run_workers(out: Path, kill: dict | None = None) -> subprocess.CompletedProcess:
    """The worker's sharded run of SECTIONS at batch 2 per process in ``out``."""
    sections = json.dumps({**SECTIONS, "data": {"batch_size": 2}})
    return torchrun(str(WORKER), str(out), sections, json.dumps(kill or {}))


def losses(out: Path) -> list[dict]:
    """log.jsonl without the timings."""
    lines = (out / ckpt.LOG_FILE).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def weights(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(checkpoint / name) for name in WEIGHT_FILES}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """The run folder of the sharded two-process run (its rank<r>.json reports included)."""
    out = tmp_path_factory.mktemp("fsdp")
    result = run_workers(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_sharded_processes_hold_half_each_and_train_as_one_process_at_the_doubled_batch(sharded, tmp_path):
    ranks = [json.loads((sharded / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["param_types"] for r in ranks] == [["DTensor"], ["DTensor"]]
    total = ranks[0]["total_bytes"]
    assert sum(r["local_bytes"] for r in ranks) == total
    assert all(abs(r["local_bytes"] - total / 2) <= 0.05 * total for r in ranks), [r["local_bytes"] for r in ranks]

    config = make_config(tmp_path, **{**SECTIONS, "data": {"batch_size": 4}})
    reward = NaNAtStep(NAN_STEP, rank=0)  # the same samples of the global batch as rank 1's
    reward.trainer = Trainer(config, GaussianBackend(image=True), reward, PROMPTS)
    records = reward.trainer.train()
    # The checkpoints hold the gathered weights: the sharded run's equal the single process's.
    for step in (1, 4):
        ours, one = weights(sharded / f"checkpoint-{step}"), weights(tmp_path / f"checkpoint-{step}")
        for file in WEIGHT_FILES:
            assert ours[file].keys() == one[file].keys()
            scale = max(v.abs().max().item() for v in one[file].values())
            error = max((ours[file][k] - one[file][k]).abs().max().item() for k in one[file])
            print(f"step {step} {file}: max |Δ| / max |w| = {error / scale:.2e}")
            assert error <= 1e-5 * scale, (step, file, error, scale)
    # Losses and gradient norms (clipped and checked on the shards) are the single process's; rank 1's
    # non-finite loss made both ranks skip that generator update, as the single process did.
    keys = [k for k in records[0] if k.endswith(("/loss", "/grad_norm"))]
    assert "generator/grad_norm" in keys and "assistant/grad_norm" in keys
    logged = torch.tensor([[r[k] for k in keys] for r in ranks[0]["records"]])
    single = torch.tensor([[r[k] for k in keys] for r in records])
    assert torch.allclose(logged, single, rtol=1e-5, equal_nan=True)
    assert [r.get("skipped_updates") for r in records] == [None, 1, None, None]
    assert all([r.get("skipped_updates") for r in rank["records"]] == [None, 1, None, None] for rank in ranks)
    norms = [r["generator/grad_norm"] for r in ranks[0]["records"] if "skipped_updates" not in r]
    assert min(norms) > 1.0  # clipped: max_grad_norm is 1
    for name in ("generator_optimizer.bin", "assistant_optimizer.bin"):
        assert (sharded / "checkpoint-4" / name).is_file()
    assert (sharded / "samples" / "step-000004-ema.png").is_file()  # the EMA of the shards samples on all ranks


def test_a_rank_killed_mid_run_resumes_to_the_uninterrupted_runs_weights_and_losses(sharded, tmp_path):
    """kill -9 of rank 1 after step 3 (checkpoint-3 not yet written), then `--resume latest`."""
    killed = run_workers(tmp_path, kill={"rank": 1, "at": "step:3"})
    assert killed.returncode != 0
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [1, 2]
    resumed = run_workers(tmp_path, kill={"resume": True})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path) == losses(sharded)
    ours, straight = weights(tmp_path / "checkpoint-4"), weights(sharded / "checkpoint-4")
    for file in WEIGHT_FILES:
        assert all(torch.equal(ours[file][k], straight[file][k]) for k in straight[file]), file


#: The tiny SD run of the documented launch: LoRA generator, shared-LoRA assistant, gradient checkpointing.
TINY_SD = [
    "loop.max_steps=2",
    "loop.assistant_steps=1",
    "optim.generator.warmup_steps=0",
    "optim.assistant.warmup_steps=0",
    "sampling.every=0",
    "logging.progress_bar=false",
    "model.generator_lora_rank=2",
    "model.assistant_lora_rank=2",
    "model.gradient_checkpointing=true",
]


def test_the_documented_launch_shards_the_tiny_sd_pipeline_with_shared_lora_and_export_reads_it(tmp_path):
    """docs/training.md's `torchrun ... -m distar train ... loop.fsdp=true`, on 2 CPU processes: the
    same weights as one process at the doubled batch, and `distar export` reads its checkpoint."""
    from distar.cli import main

    config = str(ROOT / "configs" / "tiny_sd.yaml")
    sharded = torchrun("-m", "distar", "train", "--config", config, f"output_dir={tmp_path / 'fsdp'}", "loop.fsdp=true", *TINY_SD)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stderr.count("this process holds") >= 4  # the generator and the assistant on each rank
    assert main(["train", "--config", config, f"output_dir={tmp_path / 'one'}", "data.batch_size=4", *TINY_SD]) == 0
    ours, one = weights(tmp_path / "fsdp" / "checkpoint-2"), weights(tmp_path / "one" / "checkpoint-2")
    for file in WEIGHT_FILES:
        scale = max(v.abs().max().item() for v in one[file].values())
        error = max((ours[file][k] - one[file][k]).abs().max().item() for k in one[file])
        print(f"{file}: max |Δ| / max |w| = {error / scale:.2e}")
        assert error <= 1e-5 * scale, (file, error, scale)
    assert main(["export", str(tmp_path / "fsdp" / "checkpoint-2"), "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "model_index.json").is_file()


def test_the_shared_lora_reference_drift_is_refused_under_fsdp_in_one_line(tmp_path):
    """The drift images of the held-out monitor need the reference on the main process alone."""
    prompts = [f"a prompt about thing {i}" for i in range(8)]
    overrides = ["loop.fsdp=true", "monitor.prompts=2", "model.assistant_lora_rank=2", f"output_dir={tmp_path}",
                 "data.prompts=" + json.dumps(prompts), "rewards=[]", "objective.preset=sim"]
    result = torchrun("-m", "distar", "train", "--config", str(ROOT / "configs" / "tiny_sd.yaml"), *overrides)
    assert "distar train: error: monitor.drift_steps: under loop.fsdp the shared-LoRA reference is sharded, and the " \
        "drift images are made by one process; set monitor.drift_steps=0 or model.assistant_lora_shared=false" \
        in result.stderr.splitlines(), result.stderr[-3000:]


@pytest.mark.parametrize(
    ("env", "loop", "message"),
    [
        ({"ACCELERATE_USE_FSDP": "true"}, {}, "accelerate's FSDP (--use_fsdp) prepares one model per call and distar "
         "trains two: launch with torchrun or accelerate launch --multi_gpu and set loop.fsdp=true (distar shards "
         "them with FSDP2 itself)"),
        ({}, {"fsdp": True, "mixed_precision": "fp16"},
         "loop.fsdp: fp16 loss scaling is not supported on sharded gradients; use bf16"),
        ({"ACCELERATE_MIXED_PRECISION": "fp16"}, {"fsdp": True},
         "loop.fsdp: fp16 loss scaling is not supported on sharded gradients; use bf16"),
    ],
)
def test_what_the_sharded_run_cannot_do_is_refused_in_one_line(tmp_path, monkeypatch, env, loop, message):
    from distar.config import ConfigError
    from distar.train.setup import make_accelerator

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        make_accelerator(make_config(tmp_path, loop=loop))
    assert str(err.value) == message


def test_the_fsdp_units_are_the_outermost_blocks():
    from torch import nn

    from distar.train.distributed import blocks

    class ToyBlock(nn.Module):
        def __init__(self, inner: bool) -> None:
            super().__init__()
            self.proj = nn.Linear(2, 2)
            self.inner = ToyBlock(False) if inner else None

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_in = nn.Linear(2, 2)
            self.down_blocks = nn.ModuleList([ToyBlock(True), ToyBlock(False)])
            self.mid_block = ToyBlock(True)

    net = Net()
    assert blocks(net) == [*net.down_blocks, net.mid_block]
