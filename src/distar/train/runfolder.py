"""A run folder's safety: one writer at a time, and an ``--overwrite`` that removes only what distar wrote.

**One writer.**
``<output_dir>/.distar.lock`` is locked with ``flock`` by the process of the run that writes the folder
(rank 0; on node-local disks, the first process of each node, see :mod:`distar.train.nodes`), for as
long as it trains, and holds ``pid <pid> on <host> since <UTC time>``. Another run (any rank, and any
host where the shared file system supports locks) cannot take it and is refused in one line naming
the holder. The kernel drops the lock when its holder dies however it dies, so a lock file left by a
killed run is stale by construction: the next run takes it over and says whose it was.

**What distar wrote.** ``<output_dir>/.distar-written`` lists, one per line, every file the trainer
wrote outside its checkpoints (``config.yaml``, ``log.jsonl``, sample grids, and ``tensorboard`` for
the event files of that tracker); a checkpoint folder is distar's when its ``manifest.json`` lists every
file in it. ``--overwrite`` (:func:`clear_run`) removes exactly these, and refuses a folder holding
anything else (a file of the user's in ``samples/`` or in a checkpoint folder, say) as well as ``/``
and the home folder, before any model is built. On node-local disks each node's list names what was
written on that node (nothing but checkpoints outside node 0).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from distar.config import ConfigError
from distar.train import checkpoint as ckpt
from distar.train.nodes import PROBE_PREFIX

logger = logging.getLogger(__name__)

LOCK_FILE = ".distar.lock"
WRITTEN_FILE = ".distar-written"

#: Where a tensorboard tracker writes, and how its event files are named.
TENSORBOARD = "tensorboard"
_EVENTS_PREFIX = "events.out.tfevents."
_HPARAMS = "hparams.yml"  # the run's config as the tensorboard tracker stores it

#: Errors meaning the file system cannot lock (some network or FUSE file systems).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLock:
    """The lock on run folder ``output_dir`` (see the module's docstring)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise a one-line :class:`~distar.config.ConfigError` naming its holder (or
        refusing ``/`` and the home folder, :func:`check_run_folder`)."""
        check_run_folder(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read(fd)
            os.close(fd)
            if err.errno in _NO_LOCKS:
                logger.warning("%s: the file system cannot lock files: a second run would not be refused", self.path)
                return
            raise ConfigError(
                f"{self.path.parent} is in use by another run ({holder or 'holder unknown'}): wait for it to end, "
                "stop it, or choose another output_dir"
            ) from None
        if stale := _read(fd):
            logger.info("took over the lock of a run that is gone (%s)", stale)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = f"pid {os.getpid()} on {socket.gethostname()} since {since}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Empty the lock file (a clean end) and drop the lock; nothing when it is not held."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def check_free(self) -> None:
        """Raise what :meth:`acquire` would when another run holds the lock; take nothing."""
        if self.path.is_file():
            self.acquire()
            self.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> str:
    """The holder a lock file names (empty after a clean release)."""
    return os.pread(fd, 512, 0).decode("utf-8", errors="replace").strip()


# ---------------------------------------------------------------------- what distar wrote


def record_written(output_dir: str | Path, *names: str) -> None:
    """Add ``names`` (paths relative to ``output_dir``) to the folder's list of what distar wrote."""
    with (Path(output_dir) / WRITTEN_FILE).open("a", encoding="utf-8") as f:
        f.writelines(f"{name}\n" for name in names)


def _written(root: Path) -> set[str]:
    path = root / WRITTEN_FILE
    return set(path.read_text(encoding="utf-8", errors="replace").splitlines()) if path.is_file() else set()


def _checkpoint_files(folder: Path) -> set[str]:
    """The files a checkpoint folder's manifest lists (and the manifest); empty when it has none."""
    try:
        files = set(json.loads((folder / ckpt.MANIFEST_FILE).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return files | {ckpt.MANIFEST_FILE}


def _foreign_files(root: Path) -> list[str]:
    """Files under ``root`` that distar did not write, as paths relative to ``root``."""
    written, checkpoints = _written(root), {path.name: None for _, path in ckpt.list_checkpoints(root)}
    if (root / ckpt.BEST_DIR).is_dir():  # the monitor's best checkpoint: distar's by its manifest too
        checkpoints[ckpt.BEST_DIR] = None
    foreign = []
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(root)
        top = rel.parts[0]
        if top in checkpoints and checkpoints[top] is None:
            checkpoints[top] = _checkpoint_files(root / top)
        ours = (
            rel.as_posix() in written
            or top in (LOCK_FILE, WRITTEN_FILE)
            or top.startswith(PROBE_PREFIX)
            or ckpt.is_leftover(top)
            or (top in checkpoints and rel.relative_to(top).as_posix() in checkpoints[top])
            or (top == TENSORBOARD and TENSORBOARD in written and (path.name.startswith(_EVENTS_PREFIX) or path.name == _HPARAMS))
        )
        if not ours:
            foreign.append(rel.as_posix())
    return foreign


def check_run_folder(output_dir: str | Path) -> None:
    """Refuse ``/`` and the home folder as a run folder (one-line :class:`~distar.config.ConfigError`)."""
    root = Path(output_dir).expanduser().resolve()
    if root == Path(root.anchor) or root == Path.home().resolve():
        what = "/" if root == Path(root.anchor) else "the home folder"
        raise ConfigError(f"output_dir: {output_dir} is {what}; give a folder of its own to the run")


def check_overwrite(output_dir: str | Path) -> None:
    """Refuse ``--overwrite`` of a folder that holds files distar did not write (naming one)."""
    check_run_folder(output_dir)
    root = Path(output_dir)
    if root.is_dir() and (foreign := _foreign_files(root)):
        raise ConfigError(
            f"--overwrite: {output_dir} holds {len(foreign)} file(s) distar did not write (e.g. {foreign[0]}); "
            "move them out or choose another output_dir"
        )


def check_new_run_folder(output_dir: str | Path, *, overwrite: bool) -> None:
    """Refuse ``output_dir`` for a new run when it holds one, unless ``overwrite``; with ``overwrite``, when
    :func:`clear_run` would refuse it. Nothing is removed (every node checks before any clears)."""
    ckpt.check_new_run(output_dir, overwrite=overwrite)
    if overwrite:
        check_overwrite(output_dir)


def clear_run(output_dir: str | Path) -> None:
    """Remove the previous run's files, after :func:`check_overwrite`: checkpoints, what the folder's list
    names, leftovers of interrupted saves, and the folders that leaves empty."""
    check_overwrite(output_dir)
    root = Path(output_dir)
    for path in [p for _, p in ckpt.list_checkpoints(root)] + [p for p in [root / ckpt.BEST_DIR] if p.is_dir()]:
        ckpt.remove_dir(path)
    ckpt.remove_leftovers(root)
    for probe in root.glob(f"{PROBE_PREFIX}*"):  # left by a run killed while it started
        probe.unlink()
    for name in sorted(_written(root)):
        path = root / name
        if name == TENSORBOARD and path.is_dir():
            ckpt.remove_dir(path)
        elif path.is_file():
            path.unlink()
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    (root / WRITTEN_FILE).unlink(missing_ok=True)
