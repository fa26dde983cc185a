"""One module per ``distar`` subcommand (dispatched by :mod:`distar.cli`); flags that stand for config
keys are made from the config's fields.

Such a flag shows its field's help text, type, choices and default (:func:`add_config_flags`); the
values given on the command line go back to the config by key (:func:`config_flag_values`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, Sequence, Union, get_args, get_origin


def _flag_kwargs(tp: Any) -> dict[str, Any]:
    """The ``add_argument`` keywords for a value of a config field's annotation ``tp``."""
    options = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (Union, types.UnionType) else [tp]
    if len(options) != 1:
        raise TypeError(f"no command-line flag for a field of type {tp}")
    (tp,) = options
    if tp is bool:
        return {"action": "store_true", "default": None}
    if get_origin(tp) is Literal:
        return {"choices": get_args(tp)}
    if tp in (int, float, str):
        return {"type": tp}
    raise TypeError(f"no command-line flag for a field of type {tp}")


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, names: Sequence[str], *, flags: Mapping[str, str] = {}
) -> None:
    """Add a flag for each of dataclass ``cls``'s fields ``names``, with the field's help text, type,
    choices and default: ``--<name>`` (``-`` for ``_``; ``flags`` renames), or ``--no-<name>`` for a
    boolean that is on by default. Flags not given stay ``None`` (see :func:`config_flag_values`)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        kwargs = _flag_kwargs(hints[name])
        flag = flags.get(name, name).replace("_", "-")
        default = fields[name].default
        shown = "" if default in (None, False, dataclasses.MISSING) else f" (default: {default})"
        if default is True:
            flag, shown = f"no-{flag}", " (this flag turns it off)"
            kwargs = {"action": "store_const", "const": False, "default": None}
        metavar = {} if "choices" in kwargs or "action" in kwargs else {"metavar": name.upper()}
        parser.add_argument(f"--{flag}", dest=f"config_{name}", help=fields[name].metadata["help"] + shown, **metavar, **kwargs)


def config_flag_values(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The config keys among ``names`` whose flags (from :func:`add_config_flags`) were given, with their values."""
    return {name: getattr(args, f"config_{name}") for name in names if getattr(args, f"config_{name}") is not None}
