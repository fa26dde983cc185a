"""Shared fixtures of the shapes-world tests: the shipped models and a tiny build made from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest

from distar.worlds.shapes.assets import ASSETS_DIR

from shapes_helpers import TINY_BUILD


@pytest.fixture(scope="session")
def shipped() -> Path:
    """The models shipped in the package (built by `distar world build shapes`)."""
    assert (ASSETS_DIR / "build_record.json").is_file(), f"no shipped models in {ASSETS_DIR}"
    return ASSETS_DIR


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A complete world built from scratch by the CLI with a few steps per stage."""
    from distar.cli import main

    out = tmp_path_factory.mktemp("shapes") / "models"
    assert main(["world", "build", "--out", str(out), "shapes", *TINY_BUILD]) == 0
    return out
