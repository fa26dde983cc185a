"""kill -9 at any moment, then `--resume latest`: the per-step losses of log.jsonl equal an
uninterrupted run's bit for bit, no step is missing or repeated, and every folder named
checkpoint-<step> verifies. Real `distar train` subprocesses on the tiny SD config, one thread;
$DISTAR_KILL_AT stops them inside the write of checkpoint-<step>, inside the deletion of
checkpoint-<step> by pruning, or after training step <step>. The uninterrupted run and the
last resume of the fast test run in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

from distar.cli import main
from distar.train import checkpoint as ckpt
from distar.train.callbacks import KILL_ENV
from distar.train.tracking import TIMING_KEYS

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_sd.yaml"
COMMON = [
    "loop.max_steps=8",
    "loop.assistant_steps=1",
    "checkpointing.every=2",
    "checkpointing.total_limit=2",
    "logging.every=3",  # windows straddle checkpoints: steps must still be logged exactly once
    "sampling.every=0",
    "logging.report_to=none",
    "logging.progress_bar=false",
]


def distar_train(out: Path, kill_at: str | None = None, resume: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", KILL_ENV: kill_at or ""}
    cmd = [sys.executable, "-m", "distar", "train", "--config", str(CONFIG), f"output_dir={out}", *COMMON]
    result = subprocess.run(cmd + (["--resume", "latest"] if resume else []), env=env, capture_output=True, text=True)
    expected = -signal.SIGKILL if kill_at else 0
    assert result.returncode == expected, result.stderr[-2000:]
    return result


def losses(out: Path) -> list[dict]:
    lines = (out / ckpt.LOG_FILE).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def assert_checkpoints_verify(out: Path) -> None:
    for _, path in ckpt.list_checkpoints(out):
        assert ckpt.verify_checkpoint(path) is None, path


def kill_and_resume(out: Path, kill_points: list[str]) -> list[str]:
    """Start, kill at each point in turn (resuming after each), then finish; returns resume messages."""
    messages = []
    for i, point in enumerate(kill_points):
        distar_train(out, kill_at=point, resume=i > 0)
        assert_checkpoints_verify(out)
    result = distar_train(out, resume=True)
    messages.append(result.stderr)
    assert_checkpoints_verify(out)
    return messages


def train_here(out: Path, *args: str) -> None:
    """`distar train` in this process (one thread, as the subprocesses)."""
    assert main(["train", "--config", str(CONFIG), f"output_dir={out}", *COMMON, *args]) == 0
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("straight")
    train_here(out)
    records = losses(out)
    assert [r["step"] for r in records] == list(range(1, 9))
    return records


def test_kill_inside_a_checkpoint_write_and_inside_pruning_then_resume_is_exact(straight, tmp_path, capfd):
    out = tmp_path / "run"
    distar_train(out, kill_at="checkpoint-write:4")  # generator.safetensors of checkpoint-4 written, rest not
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2] and (out / ".checkpoint-4.tmp").is_dir()
    distar_train(out, kill_at="prune:2", resume=True)  # checkpoint-6 complete, checkpoint-2 being deleted
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4, 6] and (out / ".trash-checkpoint-2").is_dir()
    assert_checkpoints_verify(out)
    train_here(out, "--resume", "latest")
    assert f"distar: resumed from {out / 'checkpoint-6'} at step 6" in capfd.readouterr().err
    assert not [p for p in out.iterdir() if ckpt.is_leftover(p.name)]  # leftovers cleared
    assert_checkpoints_verify(out)
    assert losses(out) == straight


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_points",
    [["step:1"], ["step:3", "step:5"], ["step:2", "checkpoint-write:2", "step:7"], ["checkpoint-write:6", "prune:2", "step:8"]],
)
def test_kill_at_many_moments_then_resume_is_exact(straight, tmp_path, kill_points):
    out = tmp_path / "run"
    kill_and_resume(out, kill_points)
    assert losses(out) == straight
