"""SIGTERM to real `distar train` processes at random moments of their training loop, as a scheduler
sends it before a kill; each stopped run is resumed with `--resume latest` until the run is done.

Prints how many signals saved a checkpoint of the step the run had reached (0 steps lost), the exit
statuses, and whether the resumed loss sequence equals an uninterrupted run's. Usage:

    OMP_NUM_THREADS=1 python bench/bench_signals.py --runs 3 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny_sd.yaml"
STEPS = 12
COMMON = [f"loop.max_steps={STEPS}", "checkpointing.every=5", "checkpointing.total_limit=2", "sampling.every=0",
          "logging.report_to=none", "logging.progress_bar=false", "logging.every=3"]


def losses(out: Path) -> list[dict]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith(("time/", "mem/"))} for x in lines]


def start(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distar", "train", "--config", str(CONFIG), f"output_dir={out}", *COMMON, "--resume", "latest"]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs, each signalled until it ends")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=float, default=2.0, help="signal within this many seconds of training start")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="distar-signals-"))
    straight = root / "straight"
    subprocess.run([sys.executable, "-m", "distar", "train", "--config", str(CONFIG), f"output_dir={straight}", *COMMON],
                   check=True, capture_output=True)
    reference = losses(straight)
    signals = saved = stops = lossless = exact = 0
    statuses: dict[int, int] = {}
    for run in range(args.runs):
        out = root / f"run{run}"
        while not checkpoints(out) or checkpoints(out)[-1] < STEPS:
            proc = start(out)
            for line in proc.stderr:  # training starts after this line
                if "torch thread(s)" in line:
                    break
            time.sleep(rng.uniform(0.0, args.window))
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                signals += 1
            tail = proc.stderr.read()
            status = proc.wait()
            statuses[status] = statuses.get(status, 0) + 1
            saved += status == 75 and "saved" in tail
            stops += 1
            lossless += bool(checkpoints(out)) and checkpoints(out)[-1] == losses(out)[-1]["step"]
        exact += losses(out) == reference
    print(f"signals sent {signals}, {saved} of them during training: each saved its step (exit 75); "
          f"process ends with 0 steps lost {lossless}/{stops}; exit statuses {statuses}; "
          f"resumed runs exact {exact}/{args.runs}")


if __name__ == "__main__":
    main()
