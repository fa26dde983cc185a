"""Shared fixtures of the shapes-world tests: the shipped models and a tiny build made from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest

from distar.worlds.shapes.assets import ASSETS_DIR

#: settings of a build small enough for a test (every stage runs, a few steps each)
TINY_BUILD = [
    "clip.steps=2", "clip.batch_size=8", "judge.steps=2", "judge.batch_size=8",
    "reward.steps=2", "reward.batch_size=4",
    "reference.steps=2", "reference.batch_size=4",
    "one_step.steps=2", "one_step.batch_size=2", "one_step.samples=4",
    "quality.fid_images=8", "quality.sample_steps=2", "quality.held_out_pairs=16", "quality.judge_images=16",
    "threads=1",
]


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
