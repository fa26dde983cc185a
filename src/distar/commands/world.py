"""``distar world build [--out DIR] [--dry-run] shapes [key=value ...]``: rebuild a world's models from scratch.

Overrides follow the world name (options go before it or after the overrides).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distar.runtime import add_threads_argument

WORLDS = ("shapes",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser(
        "build",
        help="train the world's models from scratch and write them with a build record",
        description="Train the world's models from scratch (fixed seeds) and write them, with "
        "build_record.json (config, seeds, timings, versions, quality figures), to --out.",
    )
    build.add_argument("world", choices=WORLDS, help="which world")
    build.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the models shipped inside the package)"
    )
    build.add_argument("--config", type=Path, default=None, help="YAML file of build settings (see --dry-run)")
    build.add_argument("--dry-run", action="store_true", help="print the resolved build settings and exit")
    build.add_argument(
        "--resume", action="store_true", help="keep the completed stages of an interrupted build of the same settings"
    )
    add_threads_argument(build)
    build.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. reference.steps=200")


def run(args: argparse.Namespace) -> int:
    from distar.config import config_yaml, load_config
    from distar.runtime import configure_threads, report_threads, stored_parameters
    from distar.worlds.shapes.assets import ASSETS_DIR
    from distar.worlds.shapes.build import BuildConfig, build_world

    config = load_config(BuildConfig, args.config, args.overrides)
    if args.dry_run:
        print(config_yaml(config), end="")
        return 0
    out = args.out or ASSETS_DIR
    requested = args.threads if args.threads is not None else config.threads
    report_threads(configure_threads(requested, parameters=stored_parameters(ASSETS_DIR)), "world build")
    record = build_world(out, config, resume=args.resume)
    print(f"wrote {out} in {record['timings_seconds']['total']:.0f}s (record: {out / 'build_record.json'})")
    return 0
