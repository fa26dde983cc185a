"""Tiny random SD/SDXL/SD3 pipeline folders (built once per session) and backends on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from distar.backends import ModelConfig, build_backend
from distar.testing.pipelines import save_tiny_pipeline

#: (family, prediction_type) pairs every backend property is checked on.
FAMILIES = [("sd", "epsilon"), ("sd", "v_prediction"), ("sdxl", "epsilon"), ("sdxl", "v_prediction")]


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda p: f"{p[0]}-{p[1]}")
def family(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Parametrises a test (module) over every (family, prediction_type) pair."""
    return request.param


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_dir(family, prediction_type, latent=True, t5=True)`` → a saved tiny pipeline folder (cached)."""
    built: dict[tuple[str, str, bool, bool], Path] = {}

    def get(family: str = "sd", prediction_type: str = "epsilon", latent: bool = True, t5: bool = True) -> Path:
        key = (family, prediction_type, latent, t5)
        if key not in built:
            name = f"{family}-{prediction_type}-{'latent' if latent else 'pixel'}{'' if t5 else '-no-t5'}"
            built[key] = save_tiny_pipeline(tmp_path_factory.mktemp(name), family, prediction_type, latent=latent, t5=t5)  # type: ignore[arg-type]
        return built[key]

    return get


@pytest.fixture
def make_backend(tiny_dir: Callable[..., Path]) -> Callable[..., Any]:
    """``make_backend(family, prediction_type, **model_config_overrides)`` on a local tiny folder."""

    def make(family: str = "sd", prediction_type: str = "epsilon", latent: bool = True, **overrides: Any) -> Any:
        folder = tiny_dir(family, prediction_type, latent, overrides.get("t5", True))
        cfg = ModelConfig(family=family, pretrained=str(folder), **overrides)
        return build_backend(cfg)

    return make


def _perturb(params: Any, seed: int, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p.dtype))


@pytest.fixture
def perturb() -> Callable[..., None]:
    """``perturb(params, seed, scale=0.05)``: add seeded noise in place (LoRA B ≠ 0, generator ≠ reference)."""
    return _perturb
