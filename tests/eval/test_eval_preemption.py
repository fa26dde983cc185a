"""A stop signal to a real `distar eval` process: it finishes the batch in progress (of images or of
scores), keeps what it wrote, says so in one line and exits 75; a rerun of the same command completes
with exactly the scores of an uninterrupted run.

$DISTAR_KILL_AT=eval-batch:<n>:<signal> makes the process send itself the signal once its n-th batch is
written, so the signal arrives while batch n + 1 is under way."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distar.cli import main
from distar.train.callbacks import KILL_ENV
from distar.train.preemption import EXIT_PREEMPTED

SRC = Path(__file__).resolve().parents[2] / "src"
STOPPED = re.compile(r"^distar eval: stopped by (SIG\w+) after (.+): the results so far are kept in (\S+) ")


def _argv(model: Path, prompts: Path, out: Path) -> list[str]:
    return [
        "eval", "--model", f"{model}::name=one", "--benchmark", str(prompts), "--metrics", "clip",
        "--metric-path", "clip=tiny", "--seeds", "0,1", "--batch-size", "2", "--timing-images", "0",
        "--device", "cpu", "--out", str(out),
    ]


def _scores(out: Path) -> dict[tuple[int, int], dict]:
    """The merged records of scores.jsonl by (index, seed)."""
    records: dict[tuple[int, int], dict] = {}
    for line in (out / "one" / "scores.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = (row["index"], row["seed"])
        records[key] = row if row.pop("new", False) else {**records.get(key, {}), **row}
    return records


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "prompts.txt"
    path.write_text("a red cube\na blue ball\na green cat\na yellow house\na small tree\n")  # 10 images, 5 batches
    return path


@pytest.fixture(scope="module")
def straight(tiny_pipelines, prompts, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight") / "out"
    assert main(_argv(tiny_pipelines["one"], prompts, out)) == 0
    return _scores(out)


# after image batch 2 of 5; after scoring batch 1 (batch 6); the last two take ~20 s each on 2 cores: slow
@pytest.mark.parametrize(
    "at, name",
    [(2, "SIGTERM"), pytest.param(6, "SIGINT", marks=pytest.mark.slow), pytest.param(3, "SIGUSR1", marks=pytest.mark.slow)],
)
def test_a_stop_signal_keeps_the_finished_batch_exits_75_and_the_rerun_is_exact(
    at, name, straight, tiny_pipelines, prompts, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = _argv(tiny_pipelines["one"], prompts, out)
    env = {**os.environ, KILL_ENV: f"eval-batch:{at}:{name}", "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-m", "distar", *argv], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.startswith("distar eval: stopped")]
    assert done.returncode == EXIT_PREEMPTED and len(lines) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    match = STOPPED.match(lines[0])
    assert match and match.group(1) == name and match.group(3) == str(out), lines[0]
    kept = _scores(out)
    images, scored = len(kept), sum("clip" in r for r in kept.values())
    # the signal came after batch `at` (2 images each); batch at + 1 was finished and written, nothing after it
    assert images // 2 + scored // 2 == at + 1, (images, scored)
    assert not (out / "summary.json").exists()

    assert main(argv) == 0
    capsys.readouterr()
    assert _scores(out) == straight
