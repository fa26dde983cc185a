"""One module per ``distar`` sub-command (see :mod:`distar.cli`), and the flags they derive from configs."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, Sequence, Union, get_args, get_origin


def _flag_type(tp: Any) -> tuple[Any, dict[str, Any]]:
    """(type of the value, extra ``add_argument`` keywords) for a config field's annotation."""
    options = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (Union, types.UnionType) else [tp]
    if len(options) != 1:
        raise TypeError(f"no command-line flag for a field of type {tp}")
    (tp,) = options
    if tp is bool:
        return bool, {"action": "store_true", "default": None}
    if get_origin(tp) is Literal:
        return str, {"choices": get_args(tp)}
    if tp in (int, float, str):
        return tp, {"type": tp}
    raise TypeError(f"no command-line flag for a field of type {tp}")


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, names: Sequence[str], *, flags: Mapping[str, str] = {}
) -> None:
    """Add ``--<name>`` (``-`` for ``_``; ``flags`` renames) for each of ``cls``'s fields ``names``,
    with the field's help text and type; unset flags stay ``None`` (see :func:`config_flag_values`)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        _, kwargs = _flag_type(hints[name])
        flag = "--" + flags.get(name, name).replace("_", "-")
        default = fields[name].default
        shown = "" if default in (None, False, dataclasses.MISSING) else f" (default: {default})"
        metavar = {} if "choices" in kwargs or kwargs.get("action") else {"metavar": name.upper()}
        parser.add_argument(flag, dest=f"config_{name}", help=fields[name].metadata["help"] + shown, **metavar, **kwargs)


def config_flag_values(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The config keys among ``names`` whose flags (from :func:`add_config_flags`) were given."""
    return {name: getattr(args, f"config_{name}") for name in names if getattr(args, f"config_{name}") is not None}
