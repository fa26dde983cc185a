"""A real ``distar serve`` process with the shapes world's shipped models, shared by the serve tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

import pytest
from serve_helpers import free_port

pytest.importorskip("starlette", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install -e '.[serve]'")


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """Base URL of ``distar serve`` (no --model: the shipped shapes models) on a free localhost port."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "distar", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"distar serve exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                urllib.request.urlopen(url + "info", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("distar serve did not answer within 180 s")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
