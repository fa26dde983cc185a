"""Prompt readers shared by training and evaluation.

``read_records(source)`` turns a prompt source into a list of string-valued rows; ``read_prompts``
picks the prompt column out of them. Sources:

- ``.txt``: one prompt per line (key ``prompt``);
- ``.csv``: comma-separated with a header row, standard CSV quoting;
- ``.tsv``: tab-separated with a header row, quoting OFF (a Parti prompt begins with a quote mark);
- ``.jsonl``: one JSON object per line; ``.json``: a list of strings or of objects;
- a ``datasets`` hub id such as ``owner/name`` (needs the optional ``datasets`` package and a network).

Blank or malformed rows are never dropped silently: each file's skipped rows are reported in one
:class:`PromptWarning` naming their line numbers.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from distar.config import ConfigError

T = TypeVar("T")

#: Columns tried, in order, when ``read_prompts`` is not told which column holds the prompt.
PROMPT_COLUMNS = ("prompt", "Prompt", "caption", "text")

#: Longer prompts are skipped and reported (text encoders read 77 to a few hundred tokens).
MAX_PROMPT_CHARS = 10_000

FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".json")

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

Record = dict[str, str]


class PromptWarning(UserWarning):
    """Rows of a prompt source were skipped (blank or malformed)."""


class PromptSourceError(ConfigError):
    """A prompt source cannot be read at all (unknown format, missing column, no ``datasets``)."""


def _txt(lines: Iterable[str]) -> Iterator[tuple[int, Record | str]]:
    for number, line in enumerate(lines, 1):
        text = line.rstrip("\r\n")
        yield number, {"prompt": text} if text.strip() else "blank line"


def _table(lines: Iterable[str], delimiter: str, quoting: int) -> Iterator[tuple[int, Record | str]]:
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=True)
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield reader.line_num, f"unreadable ({err})"
            continue
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            yield number, "blank line"
        elif header is None:
            header = [cell.strip() for cell in row]
        elif len(row) != len(header):
            yield number, f"{len(row)} fields, header has {len(header)}"
        else:
            yield number, dict(zip(header, row))


def _jsonl(lines: Iterable[str]) -> Iterator[tuple[int, Record | str]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            yield number, "blank line"
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, f"invalid JSON ({err.msg})"
            continue
        yield number, _as_record(obj)


def _json(text: str) -> Iterator[tuple[int, Record | str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PromptSourceError(f"invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(data, list):
        raise PromptSourceError("a .json prompt file must hold a list of strings or objects")
    # Items have no line numbers of their own: report 1-based item indices.
    for index, obj in enumerate(data, 1):
        yield index, _as_record(obj)


def _as_record(obj: Any) -> Record | str:
    """A JSON value as a row: a string is a prompt, an object keeps its scalar fields."""
    if isinstance(obj, str):
        return {"prompt": obj} if obj.strip() else "empty prompt"
    if isinstance(obj, dict):
        return {str(k): str(v) for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
    return f"expected a string or an object, got {type(obj).__name__}"


def _hub(dataset_id: str, split: str, name: str | None) -> Iterator[tuple[int, Record | str]]:
    try:
        import datasets
    except ImportError:
        raise PromptSourceError(
            f"'{dataset_id}' is not a local file; reading a hub dataset needs the optional "
            "'datasets' package (pip install 'distar[datasets]')"
        ) from None
    rows = datasets.load_dataset(dataset_id, name, split=split)
    for index, row in enumerate(rows, 1):
        yield index, _as_record(row)


def _rows(source: str | Path, split: str, name: str | None) -> Iterator[tuple[int, Record | str]]:
    path = Path(source)
    suffix = path.suffix.lower()
    if not path.is_file():
        if suffix in FILE_SUFFIXES or not _HUB_ID.match(str(source)):
            raise FileNotFoundError(f"prompt file not found: {source}")
        return _hub(str(source), split, name)
    if suffix not in FILE_SUFFIXES:
        raise PromptSourceError(f"{path}: unknown prompt file type (use one of {', '.join(FILE_SUFFIXES)})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise PromptSourceError(f"{path}: not UTF-8 text (byte {err.start} cannot be decoded)") from None
    if "\0" in text:
        raise PromptSourceError(f"{path}: holds NUL bytes (a binary file?)")
    lines = text.splitlines(keepends=True)
    if suffix == ".txt":
        return _txt(lines)
    if suffix == ".csv":
        return _table(lines, ",", csv.QUOTE_MINIMAL)
    if suffix == ".tsv":
        return _table(lines, "\t", csv.QUOTE_NONE)
    if suffix == ".jsonl":
        return _jsonl(lines)
    return _json(text)


def _report(source: str | Path, skipped: list[tuple[int, str]]) -> None:
    """One warning listing the skipped rows (line numbers; item/row indices for JSON and hub data)."""
    if skipped:
        unit = "line" if Path(source).suffix.lower() in (".txt", ".csv", ".tsv", ".jsonl") else "item"
        shown = "; ".join(f"{unit} {n}: {why}" for n, why in skipped[:20])
        more = f"; ... {len(skipped) - 20} more" if len(skipped) > 20 else ""
        warnings.warn(f"{source}: skipped {len(skipped)} row(s) ({shown}{more})", PromptWarning, stacklevel=3)


def _collect(source: str | Path, split: str, name: str | None) -> list[tuple[int, Record]]:
    rows: list[tuple[int, Record]] = []
    skipped: list[tuple[int, str]] = []
    for number, row in _rows(source, split, name):
        if isinstance(row, str):
            skipped.append((number, row))
        else:
            rows.append((number, row))
    _report(source, skipped)
    return rows


def read_records(source: str | Path, *, split: str = "train", name: str | None = None) -> list[Record]:
    """All well-formed rows of ``source`` as string dicts, in file order.

    ``split`` and ``name`` (configuration) apply to ``datasets`` hub ids only. Blank and malformed
    rows are skipped and reported in one :class:`PromptWarning` with their line numbers.
    """
    return [record for _, record in _collect(source, split, name)]


def prompt_column(records: Sequence[Record], column: str | None = None) -> str:
    """The column holding prompts: ``column`` if given, else the first of :data:`PROMPT_COLUMNS`."""
    keys = list(records[0]) if records else []
    if column is not None:
        if records and column not in keys:
            raise PromptSourceError(f"no column '{column}' (columns: {', '.join(keys)})")
        return column
    for candidate in PROMPT_COLUMNS:
        if candidate in keys:
            return candidate
    raise PromptSourceError(
        f"no prompt column found among {', '.join(keys) or 'no columns'}; "
        f"expected one of {', '.join(PROMPT_COLUMNS)} (or pass the column name)"
    )


def read_prompts(
    source: str | Path, column: str | None = None, *, split: str = "train", name: str | None = None
) -> list[str]:
    """The prompts of ``source`` (see :func:`read_records`); rows with an empty prompt are reported."""
    rows = _collect(source, split, name)
    if not rows:
        return []
    key = prompt_column([record for _, record in rows[:1]], column)
    prompts: list[str] = []
    empty: list[tuple[int, str]] = []
    for number, record in rows:
        text = record.get(key, "")
        if len(text) > MAX_PROMPT_CHARS:
            empty.append((number, f"'{key}' longer than {MAX_PROMPT_CHARS} characters"))
        elif text.strip():
            prompts.append(text)
        else:
            empty.append((number, f"empty '{key}'"))
    _report(source, empty)
    return prompts


def read_some(read: Callable[[], list[T]], source: str | Path) -> list[T]:
    """``read()`` of a prompt source that must give at least one row. When it gives none, the reason
    (the skipped-rows warning) is the one error line; otherwise its warnings are shown."""
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always", PromptWarning)
        rows = read()
    if not rows:
        reason = f": {skipped[0].message}" if skipped else ""
        raise PromptSourceError(f"no prompts in {source}{reason}")
    for warning in skipped:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return rows
