"""Shared fixtures of the evaluation tests: a private cache, tiny pipelines, a grouped benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distar.eval.benchmarks import Benchmark, PromptItem


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Downloads and FID statistics go to a per-session folder, never the user's cache."""
    monkeypatch.setenv("DISTAR_CACHE", str(tmp_path_factory.getbasetemp() / "distar-cache"))


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny SD pipeline folders: ``base`` (DDIM, multi-step) and ``one``, laid out like a distar
    export (LCMScheduler and ``distar.json`` with t_init = 399)."""
    from diffusers import DDIMScheduler, LCMScheduler

    from distar.testing.pipelines import save_tiny_pipeline

    root = tmp_path_factory.mktemp("pipelines")
    base = save_tiny_pipeline(root / "base", seed=0)
    one = save_tiny_pipeline(root / "one", seed=1)
    LCMScheduler.from_config(DDIMScheduler.from_pretrained(one / "scheduler").config).save_pretrained(one / "scheduler")
    index = json.loads((one / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    (one / "model_index.json").write_text(json.dumps(index))
    (one / "distar.json").write_text(json.dumps({"t_init": 399}))
    return {"base": base, "one": one}


@pytest.fixture
def styles_benchmark() -> Benchmark:
    """Four prompts in two styles, reported per style (like HPS)."""
    items = (
        PromptItem(0, "a cat", "anime"),
        PromptItem(1, "a dog", "anime"),
        PromptItem(2, "a tree", "photo"),
        PromptItem(3, "a house", "photo"),
    )
    return Benchmark("styles", items, "test", "style", (("anime", "Animation"), ("photo", "Photo")))
