"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """Each block runs from a fresh folder that has the repo's configs/, so what it writes (runs/) stays there."""
    from accelerate.state import AcceleratorState

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no Python example"
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), {})
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
