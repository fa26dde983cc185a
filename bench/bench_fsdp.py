"""Step time of a 2-process `distar train` run sharded (``loop.fsdp=true``) against DDP, and the
trainable bytes each process holds, on the same machine.

    python bench/bench_fsdp.py [--config configs/tiny_sd.yaml] [--steps 12] [--nproc 2]

Runs ``torchrun --standalone --nproc_per_node N -m distar train`` twice (sampling, checkpoints and the
monitor off; one thread per process on CPUs), prints the median logged ``time/step_s`` of each (the
first logging window, with the start-up, left out), their ratio and the sharded run's per-process
bytes lines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, steps: int, nproc: int, fsdp: bool, out: Path) -> tuple[float, list[str]]:
    """Median step seconds of one run, and its FSDP log lines."""
    overrides = [f"output_dir={out}", f"loop.max_steps={steps}", f"loop.fsdp={str(fsdp).lower()}", "logging.every=4",
                 "sampling.every=0", "checkpointing.every=0", "checkpointing.save_final=false", "monitor.every=0",
                 "logging.progress_bar=false"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "distar", "train", "--config", config, *overrides]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    times = [r["time/step_s"] for r in records if "time/step_s" in r][1:]
    return statistics.median(times), [line for line in result.stderr.splitlines() if "FSDP:" in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny_sd.yaml"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ddp, _ = run(args.config, args.steps, args.nproc, False, Path(tmp) / "ddp")
        fsdp, lines = run(args.config, args.steps, args.nproc, True, Path(tmp) / "fsdp")
    print(f"load {os.getloadavg()[0]:.1f}; step s: DDP {ddp:.3f}, FSDP {fsdp:.3f}, FSDP / DDP {fsdp / ddp:.2f}")
    print("\n".join(sorted(set(lines))))


if __name__ == "__main__":
    main()
