"""``distar world build [--out DIR] [--dry-run] shapes [key=value ...]``: rebuild a world's models from scratch;
``distar world choices shapes --out DIR``: export its simulated choices as preference pairs.

Overrides follow the world name (options go before it or after the overrides). SIGTERM, SIGINT or
SIGUSR1 end a build after the optimiser step in progress with exit status 75; ``--resume`` continues it.
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
    choices = sub.add_parser(
        "choices",
        help="export the simulated human's choices as preference pairs (for distar rewards train)",
        description="Write the pairs the build's reward model trains on (train.jsonl: the same stream, "
        "--train-batches batches of the build's batch size) and its held-out pairs (heldout.jsonl), as PNGs "
        "and JSONL lines of prompt, image_0, image_1, label (the chosen image).",
    )
    choices.add_argument("world", choices=WORLDS, help="which world")
    choices.add_argument("--out", type=Path, required=True, help="output folder")
    choices.add_argument(
        "--train-batches", type=int, default=None, help="training batches to export (default: all the build's steps)"
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "choices":
        return _choices(args)
    from distar.config import config_yaml, load_config
    from distar.runtime import configure_threads, report_threads, stored_parameters
    from distar.train.preemption import StopSignals
    from distar.worlds.shapes.assets import ASSETS_DIR
    from distar.worlds.shapes.build import BuildConfig, build_world

    config = load_config(BuildConfig, args.config, args.overrides)
    if args.dry_run:
        print(config_yaml(config), end="")
        return 0
    out = args.out or ASSETS_DIR
    requested = args.threads if args.threads is not None else config.threads
    report_threads(configure_threads(requested, parameters=stored_parameters(ASSETS_DIR)), "world build")
    kept = f"finished stages are kept in {out.with_name(out.name + '.building')} (continue with --resume)"
    with StopSignals(last_checkpoint=lambda: kept) as stop:  # a stop signal: end the step, exit 75
        record = build_world(out, config, resume=args.resume, stop=stop)
    print(f"wrote {out} in {record['timings_seconds']['total']:.0f}s (record: {out / 'build_record.json'})")
    return 0


def _choices(args: argparse.Namespace) -> int:
    from distar.config import from_dict
    from distar.errors import UserError
    from distar.io import writable_dir
    from distar.worlds.shapes.assets import ASSETS_DIR, build_record
    from distar.worlds.shapes.build import BuildConfig
    from distar.worlds.shapes.clip import export_choices, preference_pairs, reward_training_pairs

    config = from_dict(BuildConfig, build_record(ASSETS_DIR)["config"])
    batches = config.reward.steps if args.train_batches is None else args.train_batches
    if not 1 <= batches <= config.reward.steps:
        raise UserError(f"--train-batches must be between 1 and {config.reward.steps}, got {batches}")
    out = writable_dir(args.out, "--out")
    train = export_choices(
        (reward_training_pairs(config.reward, config.utility, step) for step in range(batches)), out, "train.jsonl"
    )
    held_out = export_choices(
        [preference_pairs(config.quality.held_out_pairs, config.quality.seed, config.utility)], out, "heldout.jsonl"
    )
    print(f"wrote {batches * config.reward.batch_size} training pairs to {train} and "
          f"{config.quality.held_out_pairs} held-out pairs to {held_out}")
    return 0
