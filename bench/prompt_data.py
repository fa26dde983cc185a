"""Start-up time and memory of each training process's prompt data at LAION scale.

    OMP_NUM_THREADS=1 python bench/prompt_data.py [--count 3000000] [--processes 2] [--formats txt parquet]

Writes ``--count`` LAION-style prompts (about 60 bytes each) as a ``.txt`` file and, where pyarrow is
installed, as a ``.parquet`` file with LAION's ``TEXT`` column, then starts ``--processes`` processes at
once, as ``torchrun`` starts ranks. Each one times ``load_prompts`` (what ``distar train`` calls) plus its
``PromptStream`` and first batch, and reports how much its resident memory (RSS) grew. A parquet file is
converted once into distar's cache (the first start, by whichever process gets there first); the
later starts read the cached table. The list reader of ``distar.io`` that training used before is timed
on the same text file for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "a photo of an astronaut riding horse on the moon watercolour painting fox in field flowers cozy wooden cabin "
    "snowy forest at dusk warm light portrait elderly fisherman dramatic lighting 85mm"
).split()


def write_prompts(folder: Path, count: int, formats: list[str]) -> dict[str, Path]:
    rng = random.Random(0)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))) for _ in range(count)]
    files = {"txt": folder / "prompts.txt"}
    files["txt"].write_text("\n".join(lines) + "\n")
    if "parquet" in formats:
        import pyarrow as pa
        import pyarrow.parquet as pq

        files["parquet"] = folder / "prompts.parquet"
        pq.write_table(pa.table({"URL": [f"u{i}" for i in range(count)], "TEXT": lines}), files["parquet"])
    return {k: v for k, v in files.items() if k in formats or k == "txt"}


def rank_main(source: str, rank: int, world: int, eager: bool) -> None:
    """One process: time and RSS growth of opening the prompts and drawing a first batch."""
    import psutil

    from distar.io import read_prompts
    from distar.train.build import load_prompts
    from distar.train.config import DataConfig
    from distar.train.data import PromptStream

    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    prompts = read_prompts(source) if eager else load_prompts(DataConfig(source=source))
    batch = PromptStream(prompts, 2, seed=0, rank=rank, world_size=world).next_batch()
    seconds = time.perf_counter() - start
    grown = process.memory_info().rss - before
    print(json.dumps({"rank": rank, "s": seconds, "rss_mib": grown / 2**20, "count": len(prompts), "batch": batch}))


def start(source: Path, world: int, eager: bool = False) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--rank-of", str(source), "--processes", str(world)] + (["--eager"] if eager else [])
    procs = [subprocess.Popen([*cmd, "--rank", str(r)], env=env, stdout=subprocess.PIPE, text=True) for r in range(world)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def show(label: str, results: list[dict]) -> None:
    times = ", ".join(f"{r['s']:.2f} s" for r in results)
    rss = ", ".join(f"+{r['rss_mib']:.0f} MiB" for r in results)
    print(f"{label:<44} {results[0]['count']:>9,} prompts   start-up {times}   RSS {rss}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3_000_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--formats", nargs="+", default=["txt", "parquet"], choices=["txt", "parquet"])
    parser.add_argument("--rank-of", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_of:
        rank_main(args.rank_of, args.rank, args.processes, args.eager)
        return
    if "parquet" in args.formats:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            print("pyarrow is not installed: parquet left out", file=sys.stderr)
            args.formats.remove("parquet")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DISTAR_CACHE"] = str(Path(tmp) / "cache")
        files = write_prompts(Path(tmp), args.count, args.formats)
        for name, path in files.items():
            size = path.stat().st_size / 2**20
            print(f"{name}: {size:.0f} MiB, {args.processes} processes started together", flush=True)
            show(f"  {name}, first start", start(path, args.processes))
            show(f"  {name}, second start", start(path, args.processes))
        show("  txt, list reader (distar.io.read_prompts)", start(files["txt"], args.processes, eager=True))


if __name__ == "__main__":
    main()
