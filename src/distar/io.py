"""The file helpers every package shares: atomic writes, images, dtypes, user paths, cache, prompts.

- dtype names, atomic writes (:func:`distar.runstate.write_atomic`), image tensors ↔ pixels and PNG files;
- checks of user-given paths (writable folders, safe names), made before any work starts;
- distar's cache folder (``$DISTAR_CACHE``, default ``~/.cache/distar``) for downloads and locally
  built models, the tiny stand-ins a config names (:func:`tiny_asset`), and models built from their
  config alone with random weights (:func:`random_model`);
- prompt sources: ``read_records(source)`` turns one into string-valued rows and ``read_prompts``
  picks the prompt column out of them. Sources are ``.txt`` (one prompt per line, key ``prompt``),
  ``.csv`` (a header row, standard quoting), ``.tsv`` (a header row, quoting off: a Parti prompt begins
  with a quote mark), ``.jsonl`` (one object per line), ``.json`` (a list of strings or objects) or a
  ``datasets`` hub id such as ``owner/name`` (needs the optional ``datasets`` package and a network).
  Blank or malformed rows are never dropped silently: each source's skipped rows are reported in one
  :class:`PromptWarning` naming their line numbers.

Errors are one line: :class:`~distar.config.ConfigError` for a bad option, :class:`~distar.errors.UserError`
for an unreadable input.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Sized, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from distar.config import ConfigError
from distar.errors import UserError, first_line
from distar.runstate import write_atomic  # noqa: F401  (the name other packages import)

#: Config dtype names → torch dtypes.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``"bfloat16"`` → ``torch.bfloat16``; dtypes and None pass through."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def to_uint8(images: Tensor) -> np.ndarray:
    """Images in [0, 1], (3, H, W) or (B, 3, H, W) → channels-last uint8 pixels, rounded."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()


def png_bytes(image: Tensor) -> bytes:
    """A (3, H, W) image in [0, 1] as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def load_image(path: Path | str) -> Tensor:
    """A PNG/JPEG file → (3, H, W) float32 in [0, 1]; one-line :class:`UserError` if it is not one."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{path}: not a readable image ({first_line(err)[:120]})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


# ---------------------------------------------------------------- user-given paths

#: The longest name accepted as a single path component (file systems allow 255 bytes).
MAX_NAME = 128


def writable_dir(path: str | Path, what: str) -> Path:
    """Create folder ``path`` if needed and check that a file can be written in it."""
    text = str(path)
    if not text.strip() or "\0" in text:
        raise ConfigError(f"{what}: {text[:80]!r} is not a usable folder name")
    folder = Path(text)
    probe = folder / f".distar-write-check-{os.getpid()}"  # one per process: ranks check the same folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what}: cannot write to {text[:200]} ({err.strerror or type(err).__name__})") from None
    return folder


def safe_name(name: str, what: str) -> str:
    """``name`` if it can be one path component inside a folder: no separators, not ``.``/``..``."""
    bad = (
        not name.strip()
        or name in (".", "..")
        or any(c in name for c in "/\\\0")
        or len(name.encode()) > MAX_NAME
        or not name.isprintable()
    )
    if bad:
        raise ConfigError(
            f"{what}: {name[:40]!r} is not a usable name (printable, at most {MAX_NAME} bytes, no '/', "
            "'\\\\', not '.' or '..')"
        )
    return name


# ---------------------------------------------------------------- the cache and its tiny stand-ins

#: Where each kind of tiny stand-in named in a config (``pretrained: tiny:<name>``, a reward's
#: ``path: tiny``, ``--metric-path fid=tiny``) is built: a ``module:function`` of :mod:`distar.testing`
#: returning its path. It is imported on first use, by name: the packages that accept ``tiny`` names
#: (backends, rewards, eval) sit below distar.testing and never import it.
TINY_ASSETS: dict[str, str] = {
    "pipeline": "distar.testing.pipelines:tiny_pipeline_path",
    "reward": "distar.testing.reward_models:tiny_reward_path",
    "inception": "distar.testing.inception:tiny_inception_path",
}


def cache_dir() -> Path:
    """Where locally built models live: ``$DISTAR_CACHE`` or ``~/.cache/distar``."""
    return Path(os.environ.get("DISTAR_CACHE", Path.home() / ".cache" / "distar"))


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Build into ``target`` once; safe across processes.

    The build goes to a temporary sibling folder, marked complete and renamed into place, so
    concurrent processes (e.g. the ranks of a ``torchrun`` job) never see a half-written model.
    """
    if not (target / ".complete").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        build(tmp)
        (tmp / ".complete").touch()
        try:
            tmp.rename(target)
        except OSError:  # built concurrently by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_asset(kind: str, **options: Any) -> Path:
    """The path of a tiny stand-in of ``kind`` (a key of :data:`TINY_ASSETS`), built once into the cache;
    ``options`` (e.g. ``name=``) go to its builder."""
    module, _, function = TINY_ASSETS[kind].partition(":")
    return getattr(importlib.import_module(module), function)(**options)


def random_model(cls: Any, source: str | Path, *, subfolder: str | None = None, revision: str | None = None) -> Any:
    """A diffusers or transformers model of class ``cls`` built from the config at ``source`` (a folder
    or hub id, optionally its ``subfolder``) with random weights: only the config is read."""
    from diffusers.models.modeling_utils import ModelMixin

    if issubclass(cls, ModelMixin):
        return cls.from_config(cls.load_config(source, subfolder=subfolder, revision=revision))
    return cls(cls.config_class.from_pretrained(source, subfolder=subfolder or "", revision=revision))


# ---------------------------------------------------------------- prompt sources

S = TypeVar("S", bound=Sized)

#: Columns tried, in order, when ``read_prompts`` is not told which column holds the prompt.
PROMPT_COLUMNS = ("prompt", "Prompt", "caption", "text", "TEXT")

#: Longer prompts are skipped and reported (text encoders read 77 to a few hundred tokens).
MAX_PROMPT_CHARS = 10_000

PROMPT_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".json")

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

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
        if suffix in PROMPT_FILE_SUFFIXES or not HUB_ID.match(str(source)):
            raise FileNotFoundError(f"prompt file not found: {source}")
        return _hub(str(source), split, name)
    if suffix not in PROMPT_FILE_SUFFIXES:
        raise PromptSourceError(f"{path}: unknown prompt file type (use one of {', '.join(PROMPT_FILE_SUFFIXES)})")
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


def read_some(read: Callable[[], S], source: str | Path) -> S:
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
