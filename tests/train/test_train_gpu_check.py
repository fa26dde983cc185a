"""bench/gpu_check.py on CPU at tiny size (the GPU run uses the same code)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(out: str, names: list[str]) -> dict[str, list[str]]:
    """The cells after the name of each layout's row."""
    lines = out.splitlines()
    return {name: next(line for line in lines if line.startswith(name))[len(name):].split() for name in names}


def test_every_layout_runs_at_tiny_size_and_prints_its_row(capsys):
    module = gpu_check()
    module.main(["--size", "tiny", "--device", "cpu", "--iterations", "1", "--steps", "2", "--images", "1",
                 "--estimates", "off"])
    out = capsys.readouterr().out
    for name, (_, _, seconds) in rows(out, list(module.LAYOUTS)).items():
        assert math.isfinite(float(seconds)), name
    assert "2-step CFG" in out


def test_a_layouts_row_has_the_fake_tensor_estimate_next_to_its_peak(capsys):
    module = gpu_check()
    name = "recipe: shared LoRA-64 assistant"
    module.main(["--size", "tiny", "--device", "cpu", "--iterations", "1", "--steps", "1", "--images", "1",
                 "--estimates", "inline", "--layouts", name])
    peak, estimate, _ = rows(capsys.readouterr().out, [name])[name]
    assert math.isnan(float(peak)) and 0 < float(estimate) < 0.1  # no CUDA peak on CPU; MiBs estimated


def test_the_24gb_recipe_is_a_layout_with_pickscore_as_a_random_weight_reward(tmp_path):
    module = gpu_check()
    config = module.layout_config(tmp_path / "pipe", "sdxl", "cuda", "24 GB recipe (sdxl_24gb.yaml)", 3, str(tmp_path))
    assert (config.model.generator_lora_rank, config.model.assistant_lora_rank, config.ema.enabled) == (64, 64, False)
    [reward] = config.rewards
    assert reward.random_weights and Path(reward.path) == tmp_path / "pickscore" and config.data.batch_size == 1
    recipe = module.layout_config(tmp_path / "pipe", "sdxl", "cuda", "recipe: shared LoRA-64 assistant", 3, str(tmp_path))
    assert recipe.model.generator_lora_rank == 0 and recipe.ema.enabled
