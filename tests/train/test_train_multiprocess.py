"""Two CPU processes (torchrun, gloo): sharded prompts, synchronised gradients, one checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_worker import PromptsSeen, worker_config
from train_helpers import PROMPTS, GaussianBackend, MeanReward

from distar.train import checkpoint as ckpt
from distar.train import Trainer
from distar.train.tracking import TIMING_KEYS


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """Two local CPU processes, one thread each."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_process_run_trains_in_sync_and_checkpoints(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    result = torchrun(str(worker), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in ranks)
    assert all(r["wrapped"] == "DistributedDataParallel" for r in ranks)
    # Each process reads its own slice of the global batches (4 prompts each): the first epoch is rank 0's
    # first batch, rank 1's, then the start of rank 0's second.
    first_epoch = ranks[0]["prompts"][:4] + ranks[1]["prompts"][:4] + ranks[0]["prompts"][4:6]
    assert sorted(first_epoch) == sorted(PROMPTS)
    # Different data on each rank, yet identical generators after the steps: gradients were all-reduced.
    assert ranks[0]["generator"] == ranks[1]["generator"]
    assert ranks[0]["generator"]["a"] != [1.0, 1.0]  # and it did train
    # Logged terms are averaged over the processes, so both ranks report the same numbers.
    strip = lambda recs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in recs]  # noqa: E731
    assert strip(ranks[0]["records"]) == strip(ranks[1]["records"])

    checkpoint = tmp_path / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 2
    for name in ("generator.safetensors", "generator_ema.safetensors", "assistant.safetensors", "rng_state_1.json"):
        assert (checkpoint / name).is_file(), name
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_two_process_cli_on_the_tiny_sd_pipeline_with_lora(tmp_path):
    """`torchrun -m distar train` on the tiny SD config: LoRA generator, shared-LoRA assistant,
    gradient checkpointing, DDP over gloo; checkpoints at steps 1 and 2."""
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny_sd.yaml"
    overrides = [
        f"output_dir={tmp_path}",
        "loop.max_steps=2",
        "loop.assistant_steps=1",
        "checkpointing.every=1",
        "logging.progress_bar=false",
        "rewards=[]",
        "objective.preset=sim",
        "model.generator_lora_rank=2",
        "model.assistant_lora_rank=2",
        "model.gradient_checkpointing=true",
    ]
    result = torchrun("-m", "distar", "train", "--config", str(config), *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    for step in (1, 2):
        state = json.loads((tmp_path / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["world_size"] == 2 and state["step"] == step
    assert (tmp_path / "checkpoint-2" / "rng_state_1.json").is_file()
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_a_stop_signal_to_one_rank_stops_both_after_the_same_step(tmp_path):
    """SIGTERM to one of two torchrun workers: both finish the same step, save it together and exit 75."""
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny_sd.yaml"
    overrides = [f"output_dir={tmp_path}", "loop.max_steps=100000", "loop.assistant_steps=1", "checkpointing.every=2",
                 "checkpointing.total_limit=2", "sampling.every=0", "logging.progress_bar=false"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "distar", "train", "--config", str(config), *overrides]
    launcher = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "checkpoint-2").is_dir():
        assert launcher.poll() is None, launcher.stderr.read()[-3000:]
        time.sleep(0.1)
    workers = sorted(int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split())
    os.kill(workers[-1], signal.SIGTERM)
    err = launcher.communicate(timeout=300)[1]
    stops = re.findall(r"distar train: stopped by (.+) after step (\d+): saved (\S+)", err)
    assert len(stops) == 2 and stops[0][1] == stops[1][1], err[-3000:]
    assert sorted(s[0] for s in stops) == ["SIGTERM", "a stop signal to another process"]
    step = int(stops[0][1])
    state = json.loads((tmp_path / f"checkpoint-{step}" / "trainer_state.json").read_text())
    assert state == state | {"step": step, "world_size": 2}
    assert ckpt.verify_checkpoint(tmp_path / f"checkpoint-{step}") is None
    assert launcher.returncode != 0  # torchrun reports its workers' exit status 75 as a failure


def single_process(out: Path, sections: dict) -> tuple[dict[str, torch.Tensor], list[dict], list[str]]:
    """The generator weights, records and prompts drawn of the run ``sections`` in this one process."""
    trainer = Trainer(worker_config(out, sections), GaussianBackend(), MeanReward(), PROMPTS)
    seen = PromptsSeen(trainer)
    records = trainer.train()
    return trainer.backend.generator.state_dict(), records, seen.prompts


@pytest.mark.parametrize("global_draws", [True, False])
def test_two_processes_train_as_one_process_at_the_doubled_batch(tmp_path, global_draws):
    """loop.global_draws (the default): 2 processes at batch 2 draw the prompts, noise and times of one
    process at batch 4, so the run is the same up to the order of the gradient reduction."""
    steps = 4
    sections = {"loop": {"max_steps": steps, "global_draws": global_draws}, "logging": {"every": 1}}
    result = torchrun(str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path), json.dumps(
        {**sections, "data": {"batch_size": 2}}
    ))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights, records, prompts = single_process(tmp_path / "one", {**sections, "data": {"batch_size": 4}})

    # Every batch of the single process is rank 0's batch followed by rank 1's.
    halves = [[r["prompts"][i : i + 2] for i in range(0, len(r["prompts"]), 2)] for r in ranks]
    assert [a + b for a, b in zip(*halves)] == [prompts[i : i + 4] for i in range(0, len(prompts), 4)]
    update = max((weights[k] - (1.0 if k == "a" else 0.0)).abs().max().item() for k in weights)
    error = max((torch.tensor(ranks[0]["generator"][k]) - weights[k]).abs().max().item() for k in weights)
    scale = max(v.abs().max().item() for v in weights.values())
    losses = [[r[k] for k in sorted(r) if k.endswith("/loss")] for r in ranks[0]["records"]]
    single_losses = [[r[k] for k in sorted(r) if k.endswith("/loss")] for r in records]
    print(f"global_draws={global_draws}: max |Δθ| / max |θ| = {error / scale:.2e}, update {update / scale:.2e}")
    if global_draws:
        assert error <= 1e-5 * scale, (error, scale)
        assert torch.allclose(torch.tensor(losses), torch.tensor(single_losses), rtol=1e-5, atol=1e-6)
    else:  # seed + rank: other noise, another run
        assert error > 0.01 * update


def test_an_accelerate_config_with_two_cpu_processes_is_refused_in_one_line(tmp_path):
    """accelerate's CPU launcher starts one process for `num_processes: 2` (it needs mpirun for more)."""
    accelerate_config = tmp_path / "accelerate.yaml"
    accelerate_config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_processes: 2\nnum_machines: 1\n"
        "machine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\n"
    )
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny_sd.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
           "-m", "distar", "train", "--config", str(config), f"output_dir={tmp_path / 'run'}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0  # accelerate reports distar's exit status 2 with its own traceback
    lines = result.stderr.splitlines()
    assert "distar train: error: accelerate launch starts only one process on CPU (several need mpirun): use " \
        "torchrun --standalone --nproc_per_node N -m distar train ..., or num_processes: 1" in lines
    assert not (tmp_path / "run").exists()  # refused before anything was built
