"""The published architectures: parameter counts, config-only folders, random weights, and (slow) one
training iteration of SD 1.5's real architecture through the Trainer on CPU."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import transformers

from distar.backends import ModelConfig
from distar.backends.loading import load_pipeline
from distar.config import load_config
from distar.io import random_model
from distar.testing.architectures import (
    ARCHITECTURES,
    random_component,
    write_architecture,
    write_pickscore_architecture,
)
from distar.train import TrainConfig, build_trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

#: Parameters of each component as the published checkpoints hold them (docs/backends.md quotes them).
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
    "sd35m": {"transformer": 2_243_171_520, "vae": 83_819_683, "text_encoder": 123_650_304,
              "text_encoder_2": 694_659_840, "text_encoder_3": 4_762_310_656},
    "flux-dev": {"transformer": 11_901_408_320, "vae": 83_819_683, "text_encoder": 123_060_480,
                 "text_encoder_2": 4_762_310_656},
}


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_written_architectures_have_the_published_parameter_counts(name, tmp_path):
    folder = write_architecture(tmp_path, name)
    with torch.device("meta"):
        counts = {part: parameters(random_component(folder, name, part)) for part in PUBLISHED[name]}
    assert counts == PUBLISHED[name]


def test_pickscore_architecture_is_clip_vit_h_14(tmp_path):
    with torch.device("meta"):
        model = random_model(transformers.CLIPModel, write_pickscore_architecture(tmp_path))
    assert parameters(model) == 986_109_441
    assert model.config.vision_config.image_size == 224 and model.config.vision_config.patch_size == 14


def test_random_weights_build_the_folders_architecture_without_its_weights(tiny_dir):
    folder = str(tiny_dir("sdxl", "epsilon"))
    loaded = load_pipeline(ModelConfig(family="sdxl", pretrained=folder))
    random = load_pipeline(ModelConfig(family="sdxl", pretrained=folder, random_weights=True), torch.bfloat16)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(loaded, name).state_dict(), getattr(random, name).state_dict()
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}, name
    assert random.unet.dtype == torch.float32 and random.vae.dtype == random.text_encoder.dtype == torch.bfloat16
    assert not torch.equal(loaded.unet.conv_in.weight, random.unet.conv_in.weight)


@pytest.mark.slow
def test_one_iteration_of_sd15s_real_architecture_runs_through_the_trainer(tmp_path, capsys):
    """SD 1.5's UNet, VAE and CLIP-L and a PickScore-sized CLIP ViT-H/14 reward, random weights, at
    64 px (8² latents), in the one-GPU layout with a LoRA generator (full weights would need ~20 GB of
    RAM for the generator's AdamW and EMA)."""
    folder = write_architecture(tmp_path / "sd15", "sd15")
    reward = write_pickscore_architecture(tmp_path / "pickscore")
    config = load_config(TrainConfig, CONFIGS / "sd15_pickscore.yaml", [
        f"model.pretrained={folder}", "model.random_weights=true", "model.resolution=64",
        "model.generator_lora_rank=8", "model.assistant_lora_rank=8", "ema.decay=0",
        f"rewards=[{{name: pickscore, path: {reward}, random_weights: true}}]", "data.source=null",
        "data.prompts=[a photo of an astronaut riding a horse on the moon]", "data.batch_size=1",
        "loop.assistant_steps=1", "loop.mixed_precision=bf16", "loop.cpu=true", "logging.report_to=none",
        "logging.progress_bar=false", f"output_dir={tmp_path / 'run'}",
    ])
    tick = time.perf_counter()
    trainer = build_trainer(config)
    built = time.perf_counter()
    logs = trainer.train_step()
    done = time.perf_counter()
    assert trainer.backend.latent_shape == (4, 8, 8)
    assert all(math.isfinite(float(v)) for v in logs.values()) and not trainer.guard.skipped
    with capsys.disabled():
        print(f"\nSD 1.5 architecture, 64 px: build {built - tick:.1f} s, one iteration {done - built:.1f} s")
