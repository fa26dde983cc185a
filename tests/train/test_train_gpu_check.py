"""bench/gpu_check.py on CPU at tiny size (the GPU run uses the same code), and its SDXL architectures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_layout_runs_at_tiny_size_and_prints_its_row(capsys):
    module = gpu_check()
    module.main(["--size", "tiny", "--device", "cpu", "--iterations", "1", "--steps", "2", "--images", "1"])
    out = capsys.readouterr().out
    for name in module.LAYOUTS:
        row = next(line for line in out.splitlines() if line.startswith(name))
        assert math.isfinite(float(row.split()[-1]))
    assert "2-step CFG" in out


def test_the_sdxl_architectures_have_the_published_parameter_counts():
    module = gpu_check()
    with torch.device("meta"):
        parts = {
            "unet": module.UNet2DConditionModel(**module.SDXL_UNET),
            "vae": module.AutoencoderKL(**module.SDXL_VAE),
            "text": torch.nn.ModuleList([
                module.CLIPTextModel(module.text_config(**module.CLIP_L)),
                module.CLIPTextModelWithProjection(module.text_config(**module.CLIP_BIGG)),
            ]),
        }
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    assert counts == {"unet": 2_567_463_684, "vae": 83_653_863, "text": 817_720_320}  # docs/backends.md
