"""A real ``distar serve`` process with the shapes world's shipped models, shared by the serve tests."""

from __future__ import annotations

from typing import Iterator

import pytest
from serve_helpers import serving

pytest.importorskip("starlette", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install -e '.[serve]'")


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """Base URL of ``distar serve`` (no --model: the shipped shapes models) on a free localhost port."""
    with serving() as url:
        yield url
