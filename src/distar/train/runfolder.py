"""One writer per run folder: an exclusive lock held by the process that writes it.

``<output_dir>/.distar.lock`` is locked with ``flock`` by rank 0 of the run that trains there, for as
long as it trains, and holds ``pid <pid> on <host> since <UTC time>``. Another run (any rank, and any
host where the shared file system supports locks) cannot take it and is refused in one line naming
the holder. The kernel drops the lock when its holder dies however it dies, so a lock file left by a
killed run is stale by construction: the next run takes it over and says whose it was.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from distar.config import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator

T = TypeVar("T")

logger = logging.getLogger(__name__)

LOCK_FILE = ".distar.lock"

#: Errors meaning the file system cannot lock (some network or FUSE file systems).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLock:
    """The lock on run folder ``output_dir`` (see the module's docstring)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise a one-line :class:`~distar.config.ConfigError` naming its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read(fd)
            os.close(fd)
            if err.errno in _NO_LOCKS:
                logger.warning("%s: the file system cannot lock files: a second run here would not be refused", self.path)
                return
            raise ConfigError(
                f"{self.path.parent} is in use by another run ({holder or 'holder unknown'}): wait for it to end, "
                "stop it, or choose another output_dir"
            ) from None
        if stale := _read(fd):
            logger.info("took over the lock of a run that is gone (%s)", stale)
        record = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
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


def on_main_process(accelerator: Accelerator, action: Callable[[], T]) -> T:
    """``action()`` run once, by the main process; every process gets its result, or raises its one-line
    :class:`~distar.config.ConfigError` (so that all ranks lock, resume and fail alike)."""
    outcome: list = [None, None]
    if accelerator.is_main_process:
        try:
            outcome[0] = action()
        except ConfigError as err:
            outcome[1] = str(err)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise ConfigError(outcome[1])
    return outcome[0]
