"""``distar demo``: train and compare the method family in an embedded world.

Dispatches ``--world NAME`` to ``distar.worlds.NAME.demo.run(args)``; each world reads the shared
flags below and interprets ``key=value`` overrides against its own config.
"""

from __future__ import annotations

import argparse
import importlib

from distar.runtime import add_threads_argument

#: worlds with a ``demo`` module; the first is the default.
WORLDS = ("shapes", "gmm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", choices=WORLDS, default=WORLDS[0], help="embedded world (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder for report.json, report.md and plots")
    parser.add_argument("--steps", type=int, default=None, help="training steps per method (world default if unset)")
    parser.add_argument("--seed", type=int, default=0, help="seed offset for data, initialisation and evaluation")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--config", default=None, help="YAML file with the world's demo config")
    add_threads_argument(parser)
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides of the world's demo config, after the flags"
    )


def run(args: argparse.Namespace) -> int:
    from distar.errors import UserError

    name = f"distar.worlds.{args.world}.demo"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not name.startswith(err.name):
            raise
        raise UserError(f"world {args.world!r} has no demo in this installation") from None
    return int(module.run(args) or 0)
