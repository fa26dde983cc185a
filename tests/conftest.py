"""Suite-wide test settings."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread for the whole session, fixtures of every scope included, and for the
    subprocesses tests start: the models under test are tiny, and on a small shared CPU extra threads
    only contend (tiny convolutions run far slower multi-threaded). Results also depend on the thread
    count, so in-process and subprocess runs compare bit for bit only at the same count."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Restores one thread after a test that changed it."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Locally built tiny models and downloads go to a per-session folder, never the user's cache."""
    monkeypatch.setenv("DISTAR_CACHE", str(tmp_path_factory.getbasetemp() / "distar-cache"))
