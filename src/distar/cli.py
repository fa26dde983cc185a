"""The ``distar`` command line: parses it and dispatches to :mod:`distar.commands`.

Each command lives in ``distar/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports happen inside ``run`` so ``distar --help`` stays fast.
Expected failures print one line, never a traceback: bad input (config, file, checkpoint) exits 2,
a run that had to stop (:class:`~distar.errors.RunError`) exits 1, or 3 when the monitor's
reward-hacking alarm stopped it, and a run stopped by a signal exits 75 once its checkpoint is saved
(:mod:`distar.train.preemption`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from typing import Sequence

from distar import __version__
from distar.config import ConfigError
from distar.errors import Preempted, RunError, UserError
from distar.runtime import quiet_libraries, say

#: (command, module under distar.commands, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("train", "train", "train a one-step generator with Diff-Instruct* (Algorithm 1)"),
    ("generate", "generate", "generate an image with a one-step generator (exported folder or checkpoint)"),
    ("plan", "plan", "estimate a training config's GPU memory and the cheapest changes that make it fit"),
    ("export", "export", "export a training checkpoint as a diffusers pipeline folder"),
    ("eval", "eval", "evaluate models on Parti/COCO/HPS: reward metrics, FID, diversity, cost (Tables 1 and 3)"),
    ("rewards", "rewards", "score a folder of images with reward models (PickScore, HPSv2, ImageReward, ...)"),
    ("sweep", "sweep", "train a base config over a grid of overrides × seeds in parallel; resumable; intervals over seeds"),
    ("demo", "demo", "train and compare DI*, DI*-out, DI++, SIM and Diff-Instruct in an embedded world"),
    ("world", "world", "rebuild an embedded world's models from scratch (distar world build shapes)"),
    ("serve", "serve", "a local web page that generates with a one-step model as you type"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distar",
        description="Diff-Instruct*: train, evaluate and export human-preferred one-step generators.",
    )
    parser.add_argument("--version", action="version", version=f"distar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(f"distar.commands.{module}").add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record is emitted (callers may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_show_warning = warnings.showwarning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """distar's own warnings (e.g. skipped prompt rows) as one line; others as Python shows them."""
    if category.__module__.startswith("distar"):
        say(f"distar: warning: {message}")
    else:
        _show_warning(message, category, filename, lineno, file, line)


def configure_logging() -> None:
    """Print distar's own info lines (which checkpoint a run resumed from, skipped steps) and
    warnings on stderr, one line each; other libraries' loggers keep their levels, less the
    notices that :func:`~distar.runtime.quiet_libraries` drops."""
    quiet_libraries()
    warnings.showwarning = _one_line_warning
    log = logging.getLogger("distar")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("distar: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `key=value` overrides may also follow an option (`--resume latest loop.max_steps=12`)
        overrides = getattr(args, "overrides", None)
        if not isinstance(overrides, list) or any("=" not in x or x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        overrides += extra
    if args.command is None:
        parser.print_help()
        return 0
    configure_logging()
    module = importlib.import_module(f"distar.commands.{args._module}")
    try:
        return int(module.run(args) or 0)
    except (UserError, ConfigError, FileNotFoundError) as err:
        say(f"distar {args.command}: error: {err}")
        return 2
    except Preempted as err:
        say(f"distar {args.command}: {err}")
        return err.status
    except RunError as err:
        say(f"distar {args.command}: error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        say(f"distar {args.command}: interrupted")
        return 130
