"""One writer per run folder, measured with real processes on configs/tiny_sd.yaml (CPU, gloo).

1. A run trains; second `distar train` launches on its folder (plain, --resume latest, --overwrite,
   and a 2-process torchrun) must each be refused while the first goes on undisturbed (then it is
   stopped with SIGTERM).
2. A 2-process torchrun trains; its launcher is SIGKILLed; prints how long each worker outlives it,
   and whether both stopped after the same step with a checkpoint that verifies.

    OMP_NUM_THREADS=1 python bench/bench_run_folder.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distar.train import checkpoint as ckpt
from distar.train.logs import JsonlLog

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--config", str(ROOT / "configs" / "tiny_sd.yaml"), "sampling.every=0", "logging.progress_bar=false",
          "loop.assistant_steps=1", "checkpointing.every=5", "checkpointing.total_limit=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_checkpoint(out: Path, proc: subprocess.Popen, step: int) -> None:
    while not (out / f"checkpoint-{step}").is_dir():
        if proc.poll() is not None:
            raise SystemExit(f"the run ended early with status {proc.returncode}")
        time.sleep(0.1)


def two_writers(root: Path) -> None:
    out = root / "shared"
    first = subprocess.Popen([sys.executable, "-m", "distar", "train", *COMMON, f"output_dir={out}", "loop.max_steps=100000"],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(out, first, 5)
    seconds = []
    single, multi = [sys.executable, "-m", "distar", "train"], [*TORCHRUN, "-m", "distar", "train"]
    tries = [(single, []), (single, ["--resume", "latest"]), (single, ["--overwrite"]), (multi, ["--resume", "latest"])]
    refused = 0
    for cmd, extra in tries:
        start = time.perf_counter()
        result = subprocess.run([*cmd, *COMMON, f"output_dir={out}", "loop.max_steps=100000", *extra], env=ENV, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        refused += result.returncode != 0 and "is in use by another run (pid" in result.stderr
    alive_after = first.poll() is None
    first.send_signal(signal.SIGTERM)
    status = first.wait()
    steps = [r["step"] for r in JsonlLog(out / ckpt.LOG_FILE).read()]
    print(f"second writers refused {refused}/{len(tries)} (each in {min(seconds):.1f}-{max(seconds):.1f} s); "
          f"first run still training after them: {alive_after}, then SIGTERM: exit {status}, "
          f"log steps 1..{steps[-1]} each once: {steps == list(range(1, steps[-1] + 1))}")


def launcher_death(root: Path) -> None:
    out = root / "torchrun"
    launcher = subprocess.Popen([*TORCHRUN, "-m", "distar", "train", *COMMON, f"output_dir={out}", "loop.max_steps=100000"],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(out, launcher, 10)
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()]
    launcher.kill()
    killed = time.monotonic()
    gone: dict[int, float] = {}
    while len(gone) < len(workers) and time.monotonic() - killed < 120:
        gone |= {pid: time.monotonic() - killed for pid in workers if pid not in gone and not alive(pid)}
        time.sleep(0.05)
    found = ckpt.list_checkpoints(out)
    print(f"launcher killed: {len(gone)}/{len(workers)} workers gone after "
          f"{', '.join(f'{s:.1f}' for s in sorted(gone.values()))} s; last checkpoint {found[-1][1].name}, "
          f"verifies: {ckpt.verify_checkpoint(found[-1][1]) is None}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="distar-run-folder-") as tmp:
        two_writers(Path(tmp))
        launcher_death(Path(tmp))
