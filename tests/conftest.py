"""Suite-wide test settings."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the models under test are tiny, and on a small shared CPU extra threads
    only contend (tiny convolutions run far slower multi-threaded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Locally built tiny models and downloads go to a per-session folder, never the user's cache."""
    monkeypatch.setenv("DISTAR_CACHE", str(tmp_path_factory.getbasetemp() / "distar-cache"))
