"""Checks for user-given paths, made before any work starts: writable folders, safe names.

Both raise :class:`~distar.config.ConfigError` with one line naming the option at fault.
"""

from __future__ import annotations

from pathlib import Path

from distar.config import ConfigError

#: The longest name accepted as a single path component (file systems allow 255 bytes).
MAX_NAME = 128


def writable_dir(path: str | Path, what: str) -> Path:
    """Create folder ``path`` if needed and check that a file can be written in it."""
    text = str(path)
    if not text.strip() or "\0" in text:
        raise ConfigError(f"{what}: {text[:80]!r} is not a usable folder name")
    folder = Path(text)
    probe = folder / ".distar-write-check"
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
