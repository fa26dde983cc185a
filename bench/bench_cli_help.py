"""Wall time of ``distar --help`` and ``distar <command> --help`` in fresh interpreters, against
``python -c pass`` and ``python -c "import torch"`` on the same machine.

    python bench/bench_cli_help.py [--reps 5]

Prints the median seconds of each and its ratio to a bare interpreter; help that imported torch would
cost at least the torch row.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def seconds(argv: list[str], reps: int) -> float:
    """Median wall seconds of running ``argv`` ``reps`` times (output discarded)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    from distar.cli import COMMANDS

    python = [sys.executable]
    rows = [("python -c pass", python + ["-c", "pass"]), ("python -c 'import torch'", python + ["-c", "import torch"])]
    rows += [("distar --help", python + ["-m", "distar", "--help"])]
    rows += [(f"distar {name} --help", python + ["-m", "distar", name, "--help"]) for name, _, _ in COMMANDS]
    bare = None
    print(f"{'command':<28} {'median s':>9} {'× bare':>7}")
    for label, argv in rows:
        t = seconds(argv, args.reps)
        bare = bare or t
        print(f"{label:<28} {t:>9.3f} {t / bare:>7.1f}")


if __name__ == "__main__":
    main()
