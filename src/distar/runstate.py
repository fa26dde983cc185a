"""Run state on disk: what lets a killed run continue exactly where it stopped.

Every run of distar (training, evaluation, the worlds' builds and fits) keeps its state with these:

- atomic writes (:func:`write_atomic`, :func:`write_json`, :func:`save_safetensors`, :func:`save_torch`,
  :func:`write_with` for any writer):
  a reader sees the old file or the whole new one, never a part;
- :class:`JsonlLog`: an append-only JSON-lines log whose torn last line (a kill during a write) is
  ignored when read, never glued to the next record, and dropped by :meth:`JsonlLog.truncate_after`;
- checksummed manifests (:func:`write_manifest`, :func:`verify_manifest`): every file of a folder with
  its size and SHA-256, written last, so a folder that verifies is complete and intact;
- RNG capture (:func:`rng_state`, :func:`set_rng_state`): python, numpy, torch CPU and CUDA as JSON;
- folder replacement (:func:`replace_dir`, :func:`remove_dir`): a name never holds a half-written or
  half-deleted folder;
- :class:`Stages`: the finished stages of a multi-stage job, kept with their settings for a resumed run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import save_file

from distar.errors import UserError

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
TRASH_PREFIX = ".trash-"


# ---------------------------------------------------------------------- atomic files


def fsync(path: Path) -> None:
    """Flush a file's or a folder's contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_through(path: Path, fill: Callable[[IO[bytes], Path], None], sync: bool) -> None:
    """``fill(file, name)`` writes a temporary file beside ``path`` (through the open file or its name,
    which has no suffix), which is then renamed to ``path``. On any error the temporary file is removed,
    and an OSError names ``path``."""
    path = Path(path)
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            fill(tmp, Path(tmp.name))
        if sync:
            fsync(Path(tmp.name))
        os.replace(tmp.name, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:  # a file-system error: name the file meant
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def write_atomic(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: readers see
    the old file or the whole new one, never a part. ``sync`` flushes the file to the disk before the
    rename. A failed write (a full disk) removes the temporary file and raises an OSError naming ``path``."""
    _write_through(path, lambda file, _: file.write(data), sync)


def write_with(path: Path, write: Callable[[Path], None], *, sync: bool = False) -> None:
    """As :func:`write_atomic`, for a writer that takes a file name: ``write(tmp)`` fills a temporary
    file beside ``path`` (its name has no suffix: give the writer the format), renamed to ``path`` after."""
    _write_through(path, lambda _, name: write(name), sync)


def write_json(path: Path, obj: Any, *, indent: int | None = 2, sync: bool = False) -> None:
    """``obj`` as JSON (a trailing newline), atomically; a folder in the way is a one-line :class:`UserError`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: not a file; move it away and run again")
    write_atomic(path, (json.dumps(obj, indent=indent) + "\n").encode(), sync=sync)


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], *, sync: bool = False) -> None:
    """Named tensors as a safetensors file (detached, contiguous, on the CPU), atomically."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_with(path, lambda tmp: save_file(cpu, str(tmp)), sync=sync)


def save_torch(path: Path, obj: Any, *, sync: bool = False) -> None:
    """A tree of tensors, numbers, strings, lists and dicts (an optimiser's state) with ``torch.save``,
    atomically; read it back with :func:`load_torch`."""
    write_with(path, lambda tmp: torch.save(obj, tmp), sync=sync)


def load_torch(path: Path) -> Any:
    """What :func:`save_torch` wrote (``weights_only``: no code is run)."""
    return torch.load(path, weights_only=True)


def read_json(path: Path, *, error: type[Exception] = UserError) -> Any:
    """A JSON file; a missing or garbled file is a one-line ``error`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: not JSON, 5,000 digits
        raise error(f"{path}: unreadable ({type(err).__name__})") from None


# ---------------------------------------------------------------------- JSON-lines logs


def _strict(value: object) -> object:
    """A record value as strict JSON allows it: non-finite floats become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class JsonlLog:
    """An append-only JSON-lines file of records (JSON objects; non-finite floats are written as null).

    A line that does not parse (torn by a kill during a write, not UTF-8) or that ``accept`` refuses is
    skipped when reading; :meth:`append` starts on a new line after a torn one, so the next record is
    never lost with it, and :meth:`truncate_after` drops it.
    """

    def __init__(self, path: str | Path, *, accept: Callable[[dict], bool] = lambda record: True) -> None:
        self.path = Path(path)
        self.accept = accept

    def numbered(self) -> Iterator[tuple[int, bytes, dict | None]]:
        """(line number, raw line, record or None when the line is not an accepted record), every line."""
        if not self.path.exists():
            return
        if not self.path.is_file():
            raise UserError(f"{self.path}: not a file; move it away and run again")
        for number, line in enumerate(self.path.read_bytes().splitlines(), 1):
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                record = None
            ok = isinstance(record, dict) and self.accept(record)
            yield number, line, record if ok else None

    def read(self) -> list[dict]:
        """Every accepted record, in file order; the lines skipped are counted in one logged warning."""
        lines = list(self.numbered())
        bad = sum(record is None for _, _, record in lines)
        if bad:
            logger.warning("%s: ignored %d line(s) that are not records (torn or corrupted)", self.path, bad)
        return [record for _, _, record in lines if record is not None]

    def append(self, records: Iterable[Mapping[str, Any]], *, sync: bool = False) -> None:
        """Append ``records``, one line each; ``sync`` flushes them to the disk. A failed write (a full
        disk) raises an OSError naming the file; the torn line it may leave is skipped by readers."""
        lines = "".join(json.dumps({k: _strict(v) for k, v in r.items()}, allow_nan=False) + "\n" for r in records)
        if self.path.is_file() and self.path.stat().st_size and not self._ends_in_newline():
            lines = "\n" + lines  # the file ends in a line torn by a kill
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(lines)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(self.path)) from None

    def _ends_in_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def truncate_after(self, step: int, *, key: str = "step") -> None:
        """Keep only the records whose ``key`` is at most ``step`` (later ones were written by a run that
        died after its last saved state), dropping unreadable lines; the file is replaced atomically."""
        if not self.path.exists():
            return
        kept = [
            line + b"\n"
            for _, line, record in self.numbered()
            if record is not None and isinstance(record.get(key), (int, float)) and record[key] <= step
        ]
        write_atomic(self.path, b"".join(kept))


# ---------------------------------------------------------------------- manifests


def sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_entries(folder: Path, *, sync: bool = False) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``folder`` but its manifest, sorted;
    ``sync`` flushes each file to the disk first."""
    entries = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        if sync:
            fsync(path)
        entries[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": sha256(path)}
    return entries


def write_manifest(folder: Path) -> None:
    """Sync every file of ``folder`` and record its size and SHA-256 in ``manifest.json`` (written last)."""
    folder = Path(folder)
    write_json(folder / MANIFEST_FILE, {"files": manifest_entries(folder, sync=True)}, indent=1, sync=True)
    fsync(folder)


#: Folders that verified in this process, with the (name, size, mtime) of their files then: a second
#: verification of an unchanged folder does not hash gigabytes twice.
_verified: dict[tuple[Path, tuple[str, ...]], tuple] = {}


def _signature(folder: Path) -> tuple:
    files = (p for p in folder.rglob("*") if p.is_file())
    return tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def verify_manifest(folder: Path, *, required: Iterable[str] = ()) -> str | None:
    """Why ``folder`` is not complete and intact by its manifest (naming the file at fault), or None.
    ``required``: files the manifest must list."""
    folder, required = Path(folder), tuple(sorted(required))
    key = (folder.resolve(), required)
    if key in _verified and _verified[key] == _signature(folder):
        return None
    problem = _check_manifest(folder, required)
    if problem is None:
        _verified[key] = _signature(folder)
    return problem


def _check_manifest(folder: Path, required: Iterable[str]) -> str | None:
    manifest = folder / MANIFEST_FILE
    try:
        files = json.loads(manifest.read_text())["files"]
        entries = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except FileNotFoundError:
        return f"{manifest}: missing (incomplete, or not written by this version of distar)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{manifest}: unreadable ({type(err).__name__})"
    for name in required:
        if name not in files:
            return f"{manifest}: lists no {name}"
    for name, size, digest in entries:
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != size:
            return f"{path}: {path.stat().st_size} bytes, the manifest says {size}"
        if sha256(path) != digest:
            return f"{path}: SHA-256 does not match the manifest (corrupted)"
    return None


# ---------------------------------------------------------------------- random state


def rng_state() -> dict[str, Any]:
    """Every global generator's state (python, numpy, torch CPU and CUDA) as JSON-serialisable lists."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------- folders


def to_trash(path: Path) -> Path:
    """Rename ``path`` to its trash name (one atomic rename) and return the new path."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    path.rename(trash)
    return trash


def remove_dir(path: Path) -> None:
    """Delete a folder so that no half-deleted folder keeps its name: rename first, then delete."""
    shutil.rmtree(to_trash(path))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a completely written folder ``tmp`` to ``final``, replacing an older ``final``."""
    if final.exists():
        trash = to_trash(final)
        tmp.rename(final)
        shutil.rmtree(trash)
    else:
        tmp.rename(final)
    fsync(final.parent)


def write_dir(final: Path, write: Callable[[Path], None], *, manifest: bool = True) -> None:
    """Write a folder in one piece: ``write(tmp)`` fills ``.<name>.tmp`` beside ``final``, a manifest
    is added (unless ``manifest`` is false) and the folder replaces ``final``. A failed ``write``
    leaves ``final`` as it was."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if manifest:
            write_manifest(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Stages:
    """Completed stages of a multi-stage job in ``folder`` (``<folder>/.stages/<stage>.json``: settings,
    timing, figures), e.g. a world's build.

    With ``resume``, a stage whose recorded settings equal the current ones is loaded from the folder
    instead of being run again, so an interrupted multi-hour job continues where it stopped; without,
    ``folder`` is emptied. ``stop(where)`` is called before each stage (it may raise to end the job).
    """

    def __init__(
        self, folder: Path, *, resume: bool, echo: Callable[[str], None] = print, stop: Callable[[str], None] = lambda where: None
    ) -> None:
        self.dir, self.echo, self.stop = folder / ".stages", echo, stop
        if not resume:
            shutil.rmtree(folder, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self.figures: dict[str, object] = {}

    def done(self, stage: str, settings: dict) -> bool:
        path = self.dir / f"{stage}.json"
        if not path.is_file():
            return False
        record = read_json(path)
        if record["settings"] != settings:
            return False
        self.timings[stage] = record["seconds"]
        self.figures.update(record["figures"])
        self.echo(f"[{stage}] kept from the interrupted build ({record['seconds']:.0f}s when built)")
        return True

    @contextlib.contextmanager
    def run(self, stage: str, settings: dict) -> Iterator[dict[str, object]]:
        """Time the stage; the yielded dict collects its figures, recorded when the stage completes."""
        self.stop(f"before the {stage} stage")
        start = time.perf_counter()
        self.echo(f"[{stage}] start")
        figures: dict[str, object] = {}
        yield figures
        self.timings[stage] = round(time.perf_counter() - start, 1)
        self.figures.update(figures)
        record = {"settings": settings, "seconds": self.timings[stage], "figures": figures}
        write_json(self.dir / f"{stage}.json", record)
        self.echo(f"[{stage}] done in {self.timings[stage]:.0f}s")
