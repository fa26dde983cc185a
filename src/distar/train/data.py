"""Prompts for Algorithm 1: lazy prompt tables and an endless, sharded, reproducible stream of batches.

**The stream.** Epoch e is a permutation of all N prompts drawn from a generator seeded with
``seed + e`` (the same on every process); epochs follow each other without a gap. Each update takes
the next *global batch* of R·b prompts of that endless sequence (R processes at ``batch_size`` b), and
process r keeps its slice r·b … r·b + b − 1. R processes at batch b therefore draw exactly the prompts
that one process draws at batch R·b, in the same order. The whole state is one integer,
``position``: the number of prompts consumed by all processes together, which checkpoints store to
resume exactly (with any number of processes).

**Prompt tables.** A :class:`PromptTable` holds N prompts as UTF-8 bytes in one file, memory-mapped,
with the byte range of each: a prompt is decoded only when a batch takes it, so each process reads
only its own prompts and start-up does not grow with a Python list of millions of strings. A ``.txt``
file is indexed in place (:func:`index_text_file`); every other source is converted once into a
table in distar's cache (:func:`cached_table`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, overload

import numpy as np
import torch

from distar.io import (
    HUB_ID,
    MAX_PROMPT_CHARS,
    PROMPT_FILE_SUFFIXES,
    PromptSourceError,
    PromptWarning,
    build_once,
    cache_dir,
    prompt_column,
    read_prompts,
)

#: Bytes of a text file indexed at a time (bounds the scan's temporary memory).
CHUNK_BYTES = 16 * 2**20

#: Format of cached tables; bump when the layout changes.
TABLE_VERSION = 1


class PromptTable(Sequence[str]):
    """N prompts stored as UTF-8 bytes ``blob[starts[i]:ends[i]]`` of a memory-mapped file."""

    def __init__(self, blob: Path, starts: np.ndarray, ends: np.ndarray) -> None:
        if len(starts) != len(ends):
            raise ValueError("starts and ends differ in length")
        self.path = Path(blob)
        self.starts, self.ends = starts, ends
        size = self.path.stat().st_size
        self._bytes = np.memmap(self.path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"prompt {index} of {len(self)}")
        return self._bytes[int(self.starts[index]) : int(self.ends[index])].tobytes().decode("utf-8")

    def __repr__(self) -> str:
        return f"PromptTable({str(self.path)!r}, {len(self)} prompts)"


class PromptStream:
    """Endless batches of prompts for one process of ``world_size`` (see the module notes).

    ``prompts`` is any sequence: a list or a lazy :class:`PromptTable`; it is not copied."""

    def __init__(
        self,
        prompts: Sequence[str],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if len(prompts) == 0:
            raise ValueError("no prompts")
        self.prompts = prompts
        self.batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.position = 0
        self._epoch: int | None = None
        self._order: torch.Tensor | None = None

    def _index(self, position: int) -> int:
        """The prompt index at global ``position`` of the endless sequence of epochs."""
        epoch, offset = divmod(position, len(self.prompts))
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._order = torch.randperm(len(self.prompts), generator=generator)
            self._epoch = epoch
        assert self._order is not None
        return int(self._order[offset])

    def next_batch(self) -> list[str]:
        """This process's ``batch_size`` prompts of the next global batch."""
        first = self.position + self.rank * self.batch_size
        batch = [self.prompts[self._index(p)] for p in range(first, first + self.batch_size)]
        self.position += self.batch_size * self.world_size
        return batch

    @property
    def epoch(self) -> int:
        """Epochs completed by the global position."""
        return self.position // len(self.prompts)

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


# ---------------------------------------------------------------- text files, indexed in place


def _report(source: object, skipped: list[tuple[int, str]], total: int, unit: str) -> None:
    """One warning listing the first skipped rows (1-based line or item numbers) and their count."""
    if total:
        shown = "; ".join(f"{unit} {n}: {why}" for n, why in skipped)
        more = f"; ... {total - len(skipped)} more" if total > len(skipped) else ""
        warnings.warn(f"{source}: skipped {total} row(s) ({shown}{more})", PromptWarning, stacklevel=3)


def _scan_chunk(path: Path, chunk: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end (without ``\\n`` or ``\\r\\n``, file offsets) and blankness of the lines of ``chunk``,
    which starts at file offset ``base`` and holds whole lines; refuses bytes that are not UTF-8 text."""
    raw = chunk.tobytes()
    if b"\0" in raw:
        raise PromptSourceError(f"{path}: holds NUL bytes (a binary file?)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptSourceError(f"{path}: not UTF-8 text (byte {base + err.start} cannot be decoded)") from None
    newlines = np.flatnonzero(chunk == ord("\n"))
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(chunk)]])
    if starts[-1] == len(chunk):  # the chunk ends with a newline: no line after it
        starts, ends = starts[:-1], ends[:-1]
    carriage = ends > starts
    carriage[carriage] = chunk[ends[carriage] - 1] == ord("\r")
    ends[carriage] -= 1
    blank = ends == starts
    filled = np.flatnonzero(~blank)
    if len(filled):  # a line is blank unless a segment from its start to the next filled line's start has content
        span = chunk[: ends[filled[-1]]]
        content = (span != ord(" ")) & ((span < ord("\t")) | (span > ord("\r")))
        blank[filled] = ~np.logical_or.reduceat(content, starts[filled])
    return starts + base, ends + base, blank


def _scan_text(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_scan_chunk` over the whole file, read :data:`CHUNK_BYTES` at a time (cut at line breaks)."""
    parts = []
    base = 0
    carry = np.zeros(0, np.uint8)
    with open(path, "rb") as file:
        while True:
            block = np.frombuffer(file.read(CHUNK_BYTES), dtype=np.uint8)
            data = np.concatenate([carry, block]) if len(carry) else block
            if len(block) == 0:
                if len(data):
                    parts.append(_scan_chunk(path, data, base))
                break
            cut = data.tobytes().rfind(b"\n") + 1
            if not cut:
                carry = data
                continue
            parts.append(_scan_chunk(path, data[:cut], base))
            base += cut
            carry = data[cut:].copy()
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]


def index_text_file(path: str | Path) -> PromptTable:
    """A ``.txt`` file, one prompt a line, as a :class:`PromptTable` over the file itself.

    Blank lines and lines longer than ``MAX_PROMPT_CHARS`` characters are skipped and reported in one
    :class:`~distar.io.PromptWarning`; a UTF-8 byte-order mark is ignored; a file that is not UTF-8
    text is refused. The scan is vectorised and its temporaries are bounded by :data:`CHUNK_BYTES`:
    what stays is 16 bytes of index per prompt.
    """
    path = Path(path)
    starts, ends, blank = _scan_text(path)
    if len(starts) and starts[0] == 0:
        with open(path, "rb") as file:
            if file.read(3) == b"\xef\xbb\xbf":
                starts[0] += 3
                blank[0] |= ends[0] <= starts[0]
    table = PromptTable(path, starts, ends)
    too_long = np.zeros_like(blank)
    for i in np.flatnonzero(~blank & (ends - starts > MAX_PROMPT_CHARS)):  # bytes ≥ characters: decode to be sure
        too_long[i] = len(table[i]) > MAX_PROMPT_CHARS
    bad = np.flatnonzero(blank | too_long)
    reasons = [(int(i) + 1, "blank line" if blank[i] else f"longer than {MAX_PROMPT_CHARS} characters") for i in bad[:20]]
    _report(path, reasons, len(bad), "line")
    keep = ~(blank | too_long)
    return PromptTable(path, starts[keep], ends[keep])


# ---------------------------------------------------------------- other sources, converted once


def write_table(folder: Path, prompts: Iterable[str]) -> int:
    """Write ``prompts`` as a table into ``folder`` (``prompts.bin`` and ``offsets.npy``); returns the count."""
    lengths: list[int] = []
    with open(folder / "prompts.bin", "wb") as blob:
        for prompt in prompts:
            encoded = prompt.encode("utf-8")
            blob.write(encoded)
            lengths.append(len(encoded))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(folder / "offsets.npy", offsets)
    return len(lengths)


def read_table(folder: Path) -> PromptTable:
    """The table that :func:`write_table` wrote into ``folder`` (its offsets memory-mapped)."""
    offsets = np.load(folder / "offsets.npy", mmap_mode="r")
    return PromptTable(folder / "prompts.bin", offsets[:-1], offsets[1:])


def checked(prompts: Iterable[str | None], source: object, unit: str = "item") -> Iterator[str]:
    """The prompts of ``prompts`` that are not empty and at most ``MAX_PROMPT_CHARS`` characters long;
    the others are reported in one warning when the iteration ends."""
    skipped: list[tuple[int, str]] = []
    total = 0
    for number, text in enumerate(prompts, 1):
        if text is not None and text.strip() and len(text) <= MAX_PROMPT_CHARS:
            yield text
            continue
        total += 1
        if len(skipped) < 20:
            skipped.append((number, "empty prompt" if not (text or "").strip() else f"longer than {MAX_PROMPT_CHARS} characters"))
    _report(source, skipped, total, unit)


def cached_table(key: dict, prompts: Callable[[], Iterable[str]]) -> PromptTable:
    """The table of ``prompts()`` kept in ``<cache>/prompts/<hash of key>/``, converted on first use
    (safely across processes: a half-written table is never read)."""
    digest = hashlib.sha256(json.dumps({**key, "version": TABLE_VERSION}, sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_dir() / "prompts" / digest
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PromptWarning)
        build_once(folder, lambda tmp: write_table(tmp, prompts()))
    for warning in caught:  # shown once, by the process that converted the source
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return read_table(folder)


def _needs(module: str, extra: str, what: str) -> Any:
    """``import module``, or a one-line error naming the extra that installs it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise PromptSourceError(f"{what} needs the optional '{module}' package (pip install 'distar[{extra}]')") from None


def _strings(values: Iterable[Any]) -> Iterator[str | None]:
    return (None if v is None else str(v) for v in values)


def _parquet_prompts(path: Path, column: str | None) -> Callable[[], Iterator[str]]:
    parquet = _needs("pyarrow.parquet", "parquet", f"{path}: a parquet file")
    file = parquet.ParquetFile(path)
    key = prompt_column([dict.fromkeys(file.schema_arrow.names, "")], column)

    def prompts() -> Iterator[str]:
        batches = file.iter_batches(columns=[key], batch_size=65_536)
        return checked((v for batch in batches for v in _strings(batch.column(0).to_pylist())), path, "row")

    return prompts


def _dataset_prompts(dataset: Any, column: str | None, source: str) -> Callable[[], Iterator[str]]:
    """The prompt column of a ``datasets`` Dataset or IterableDataset, a batch at a time."""
    names = dataset.column_names or list(next(iter(dataset), {}))
    key = prompt_column([dict.fromkeys(names, "")], column)

    def prompts() -> Iterator[str]:
        batches = dataset.select_columns([key]).iter(batch_size=65_536)
        return checked((v for batch in batches for v in _strings(batch[key])), source)

    return prompts


def _split(found: Any, split: str, source: str) -> Any:
    """``found[split]`` of a DatasetDict (a Dataset is returned as it is)."""
    if isinstance(found, dict):
        if split not in found:
            raise PromptSourceError(f"{source}: no split '{split}' (splits: {', '.join(found)})")
        return found[split]
    return found


def open_prompts(
    source: str, column: str | None = None, *, split: str = "train", name: str | None = None, streaming: bool = False
) -> PromptTable:
    """The prompts of ``source`` as a lazy :class:`PromptTable`.

    ``source`` is a ``.txt`` file (indexed in place); a ``.csv``/``.tsv``/``.jsonl``/``.json`` or
    ``.parquet`` file; a folder written by ``datasets``' ``save_to_disk`` (its ``split`` when it holds
    several); or a ``datasets`` hub id with configuration ``name`` and ``split``, read as a stream of
    its prompt column when ``streaming``. All but ``.txt`` are converted once into distar's cache, keyed
    by the file's path, size and modification time (a hub dataset: by its id, name and split, or by
    the ``datasets`` fingerprint of its download). The prompt column is ``column``, else the first of
    :data:`~distar.io.PROMPT_COLUMNS`. Empty and over-long prompts are skipped with one warning.
    """
    path = Path(source).expanduser()
    key: dict[str, Any] = {"column": column}
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return index_text_file(path)
        stat = path.stat()
        key.update(file=str(path.resolve()), size=stat.st_size, mtime=stat.st_mtime_ns)
        if suffix == ".parquet":
            return cached_table(key, _parquet_prompts(path, column))
        if suffix in PROMPT_FILE_SUFFIXES:
            return cached_table(key, lambda: read_prompts(path, column))
        raise PromptSourceError(
            f"{path}: unknown prompt file type (use one of {', '.join((*PROMPT_FILE_SUFFIXES, '.parquet'))})"
        )
    if path.is_dir():
        datasets = _needs("datasets", "datasets", f"{path}: a datasets folder")
        try:
            dataset = _split(datasets.load_from_disk(str(path)), split, source)
        except FileNotFoundError:
            raise PromptSourceError(f"{path}: a folder, but not one written by datasets' save_to_disk") from None
        key.update(fingerprint=dataset._fingerprint)
        return cached_table(key, _dataset_prompts(dataset, column, source))
    if path.suffix.lower() in (*PROMPT_FILE_SUFFIXES, ".parquet") or not HUB_ID.match(source):
        raise FileNotFoundError(f"prompt file not found: {source}")
    datasets = _needs("datasets", "datasets", f"'{source}' is not a local file; reading a hub dataset")
    if streaming:
        key.update(hub=source, name=name, split=split)
        stream = datasets.load_dataset(source, name, split=split, streaming=True)
        return cached_table(key, _dataset_prompts(stream, column, source))
    dataset = datasets.load_dataset(source, name, split=split)
    key.update(fingerprint=dataset._fingerprint)
    return cached_table(key, _dataset_prompts(dataset, column, source))
