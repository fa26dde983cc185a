"""``distar sweep``: a base config × a grid of overrides × seeds, in parallel one-thread processes, resumable.

``distar sweep --config configs/tiny_sd.yaml --grid 'objective.reward_scale=[30,100]' --seeds 3 --out DIR``
trains every point at every seed (:mod:`distar.sweep`), skips the runs a previous call into ``DIR``
finished, and writes ``DIR/results.json``, ``DIR/report.md`` and ``DIR/metrics.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distar.commands import add_config_flags, config_flag_values

#: SweepConfig fields with a flag of their own.
FLAGS = ("config", "seeds", "seed_key", "seed_stride", "runner", "evaluate", "identity", "jobs", "threads")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from distar.sweep import SweepConfig

    parser.add_argument("--out", required=True, help="sweep folder: runs/, results/, sweep.json, results.json, report.md")
    parser.add_argument(
        "--sweep", metavar="FILE", help="sweep YAML (config, overrides, grid, seeds, ...; a relative config path is from the "
        "file's folder); flags override it",
    )
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=[V1,V2,...]",
        help="a grid axis; the --grid flags together form one product of every combination",
    )  # fmt: skip
    parser.add_argument("--devices", help="comma-separated GPU ids, one per worker in turn (CUDA_VISIBLE_DEVICES)")
    add_config_flags(parser, SweepConfig, FLAGS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base config for every run")


def run(args: argparse.Namespace) -> int:
    from distar.config import from_dict, read_config_file
    from distar.sweep import SweepConfig, collect, run_sweep, write_report

    data = read_config_file(args.sweep) if args.sweep else {}
    if args.sweep and data.get("config") and not Path(data["config"]).is_absolute():
        data["config"] = str(Path(args.sweep).parent / data["config"])  # a sweep file names its base config beside it
    data.update(config_flag_values(args, FLAGS))
    if args.grid:
        data["grid"] = [dict(_axis(item) for item in args.grid)]
    if args.overrides:
        data["overrides"] = [*data.get("overrides", []), *args.overrides]
    if args.devices:
        data["devices"] = [d.strip() for d in args.devices.split(",") if d.strip()]
    sweep = from_dict(SweepConfig, data)
    run_sweep(sweep, args.out)
    write_report(args.out, collect(args.out))
    print(f"report: {args.out}/report.md")
    return 0


def _axis(item: str) -> tuple[str, Any]:
    """``key=[v1, v2]`` as (key, values), the values parsed as YAML."""
    from distar.config import ConfigError, parse_yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--grid {item!r} is not of the form key=[v1, v2, ...]")
    return key.strip(), parse_yaml(raw, f"--grid {key.strip()}")
