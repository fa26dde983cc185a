"""Commands keep other libraries' empty notices and loading bars off stderr (distar.runtime.quiet_libraries)."""

from __future__ import annotations

import importlib
import logging
import sys

from distar.runtime import QUIET_NOTICES, quiet_libraries, when_imported


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_quiet_notices_are_dropped_and_other_warnings_kept():
    quiet_libraries()
    seen = _Records()  # on each logger itself: diffusers and transformers stop propagation once imported
    for name, start in QUIET_NOTICES:
        logger, level = logging.getLogger(name), logging.getLogger(name).level
        logger.addHandler(seen)
        logger.setLevel(logging.WARNING)  # whatever verbosity an earlier test left to the library
        try:
            logger.warning(start + " ... (the library's notice)")
            logger.warning("a real warning from " + name)
        finally:
            logger.removeHandler(seen)
            logger.setLevel(level)
    assert seen.messages == [f"a real warning from {name}" for name, _ in QUIET_NOTICES]


def test_when_imported_runs_after_the_first_import(tmp_path, monkeypatch):
    (tmp_path / "distar_probe_module.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    when_imported("distar_probe_module", lambda module: seen.append(module.VALUE + 1))
    assert seen == []
    module = importlib.import_module("distar_probe_module")
    assert seen == [42] and module.VALUE == 41
    when_imported("distar_probe_module", lambda module: seen.append(0))  # already imported: at once
    assert seen == [42, 0]
    sys.modules.pop("distar_probe_module")
