"""Typed configuration: frozen-or-plain dataclasses loaded from YAML with dotted overrides.

``load_config(TrainConfig, "cfg.yaml", ["optim.lr=1e-5", "objective.preset=di_star"])`` builds the
dataclass tree, checks every key and type, and raises :class:`ConfigError` with a one-line message
naming the offending key. Each field's ``metadata={"help": ...}`` is its documentation.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import reprlib
import stat
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, reported in one line."""


#: Bounds on what a config file may expand to: nodes after aliases are resolved, and nesting depth.
MAX_NODES = 100_000
MAX_DEPTH = 32
#: The largest config file (and override) read: prompt lists this long belong in a prompt file.
MAX_CONFIG_BYTES = 1 << 20


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 40, 40, 4, 4, 2


def _short(value: Any) -> str:
    """A value's repr for a one-line message, cut to 60 characters."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


#: The words YAML 1.1 reads as each boolean: a choice field that offers one of them takes it back.
_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _foreign_hint(cls: type, key: str, prefix: str) -> str:
    """Where distar keeps what other trainers call ``key``: a class's ``foreign_keys`` maps such names
    (diffusers' and TRL's ``learning_rate``, ``max_train_steps``, ...) to its own keys, relative to the
    class, or to a command-line flag (``--...``)."""
    targets = getattr(cls, "foreign_keys", {}).get(key)
    if not targets:
        return ""
    names = " and ".join(t if t.startswith("--") else f"'{prefix}{t}'" for t in targets)
    return f" (distar's name for it: {names})"


def _coerce(value: Any, tp: Any, where: str, base: Any = None) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; a mapping for a dataclass section overrides
    ``base``, the section's default, when it is an instance of that dataclass."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where, base)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be null")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off/false (yes/on/true) as a boolean
            words = [a for a in get_args(tp) if isinstance(a, str) and a in _YAML_BOOL_WORDS[value]]
            value = words[0] if len(words) == 1 else value
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {_short(value)} is not one of {choices}")
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_short(value)}")
        args = get_args(tp)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_short(value)}")
        args = get_args(tp)
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if len(args) == 2 else dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_short(value)}")
        return from_dict(tp, value, prefix=f"{where}.", base=base if type(base) is tp else None)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_short(value)}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where}: expected a finite number, got {_short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_short(value)}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "", *, base: T | None = None) -> T:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys and wrong types.

    The keys given override ``base`` (default: the class's defaults). A section whose field has a default
    instance (``field(Section(steps=120))``) overrides that instance's values, not the section class's.
    A class with a ``presets`` mapping takes a ``preset`` key: that preset's values become the
    defaults (in place of ``base``'s), and the other keys given override them.
    """
    presets = getattr(cls, "presets", None)
    if isinstance(presets, Mapping) and data.get("preset") is not None:
        base = None
        if not isinstance(data["preset"], str) or data["preset"] not in presets:
            choices = ", ".join(presets)
            raise ConfigError(f"{prefix}preset: unknown preset {_short(data['preset'])} (choose from {choices})")
        data = {**presets[data["preset"]], **data}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        hint = _foreign_hint(cls, key, prefix) or _suggest(key, list(fields))
        raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
    # Only a mapping (a section) overrides a default: build defaults for those alone (a factory runs each time).
    kwargs = {
        k: _coerce(v, hints[k], f"{prefix}{k}", _default(fields[k], base) if isinstance(v, Mapping) else None)
        for k, v in data.items()
    }
    try:
        return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None


def _default(f: dataclasses.Field, base: Any) -> Any:
    """Field ``f``'s value in ``base``, else its default (None when it has none)."""
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def to_dict(obj: Any) -> Any:
    """The plain (YAML-serialisable) form of a dataclass tree."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _StrictLoader(yaml.SafeLoader):
    """YAML with string keys only and no duplicate keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            if key_node.tag != "tag:yaml.org,2002:str":
                shown = _short(key_node.value) if isinstance(key_node, yaml.ScalarNode) else f"({key_node.id})"
                raise ConfigError(f"line {line}: key {shown} is not a string")
            if key_node.value in seen:
                raise ConfigError(f"line {line}: duplicate key '{_short(key_node.value)[1:-1]}'")
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _check_size(data: Any) -> None:
    """Refuse documents that expand (through aliases) past :data:`MAX_NODES` or nest past :data:`MAX_DEPTH`."""
    sizes: dict[int, int] = {}

    def size(obj: Any, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(obj, (dict, list)):
            return 1
        if id(obj) in sizes:
            if sizes[id(obj)] < 0:
                raise ConfigError("a YAML alias refers to itself")
            return sizes[id(obj)]
        sizes[id(obj)] = -1
        children = obj.values() if isinstance(obj, dict) else obj
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise ConfigError(f"holds more than {MAX_NODES} values (YAML aliases included)")
        sizes[id(obj)] = total
        return total

    size(data, 0)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML strictly (see :class:`_StrictLoader`, :func:`_check_size`); errors name ``where``
    and the line and column."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        _check_size(data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{where}: invalid YAML{at} ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{where}: {str(err).split(';')[0][:120]}") from None
    return data


def _section(data: dict[str, Any], key: str, where: str) -> tuple[dict[str, Any], str]:
    """The mapping that holds the dotted ``key`` of a nested dict (sections made as needed) and its last part."""
    *sections, last = key.strip().split(".")
    node = data
    for part in sections:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: '{part}' is not a section")
        node = child
    return node, last


def set_key(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set the dotted ``key`` (``a.b.c``) of a nested dict to ``value``, in place."""
    node, last = _section(data, key, f"'{_short(key)[1:-1]}'")
    node[last] = value
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{_short(item)[1:-1]}' is not of the form key=value")
        if len(item) > MAX_CONFIG_BYTES:
            raise ConfigError(f"override '{_short(item)[1:-1]}': longer than {MAX_CONFIG_BYTES >> 20} MiB")
        key, raw = item.split("=", 1)
        if not all(part.strip() for part in key.strip().split(".")):
            raise ConfigError(f"override '{_short(item)[1:-1]}': empty key")
        where = f"override '{_short(key)[1:-1]}'"
        node, last = _section(data, key, where)
        node[last] = parse_yaml(raw, where) if raw.strip() else ""
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file, parsed strictly (:func:`parse_yaml`); one-line errors."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, /dev/zero never ends
            raise ConfigError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, the limit for a config file "
                "(put long prompt lists in a prompt file: data.source)"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    loaded = parse_yaml(text, str(path))
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return loaded or {}


def load_config(
    cls: type[T], source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()
) -> T:
    """Load ``cls`` from a YAML file, or a nested mapping (left unchanged), or its defaults when
    ``source`` is None, plus dotted ``key=value`` overrides."""
    if isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        data = read_config_file(source) if source is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))


def config_yaml(obj: Any) -> str:
    """The resolved config as YAML, keys in field order."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(config_yaml(obj))


def field(default: Any = dataclasses.MISSING, *, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text; mutable defaults are deep-copied per instance."""
    meta = {"help": help}
    if isinstance(default, (list, dict)) or (
        dataclasses.is_dataclass(default) and not isinstance(default, type)
    ):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta, **kwargs)
    return dataclasses.field(default=default, metadata=meta, **kwargs)
