"""The generator's LoRA in diffusers' format: `pipe.load_lora_weights` loads every trained layer and
reproduces the merged export; diffusers' own converter is shown to drop layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, LCMScheduler
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict

from distar.backends import ModelConfig, build_backend
from distar.backends.loading import denoiser, denoiser_name, one_step_flow_scheduler, resolve_pretrained
from distar.backends.lora import LORA_EMA_WEIGHTS_FILE, LORA_WEIGHTS_FILE, lora_layers, save_diffusers_lora
from distar.cli import main
from distar.export.pipeline import METADATA_FILE, export_checkpoint, generator_call
from export_helpers import one_step, write_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def lora_modules(unet) -> set[str]:
    """Names of the modules that carry a LoRA adapter."""
    return {name for name, module in unet.named_modules() if module in set(lora_layers(unet))}


def base_pipeline(folder) -> DiffusionPipeline:
    """The reference folder as plain diffusers loads it, with the one-step scheduler of the card."""
    pipe = DiffusionPipeline.from_pretrained(folder)
    if denoiser_name(pipe) == "transformer":
        pipe.scheduler = one_step_flow_scheduler(pipe.scheduler.config)
    else:
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, clip_sample=False, thresholding=False)
    return pipe


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "sana"])
def test_lora_export_loads_completely_and_equals_the_merged_export(family, tiny_dir, tmp_path, perturb):
    base = tiny_dir(family)
    cfg = ModelConfig(family=family, pretrained=str(base), generator_lora_rank=4, lora_alpha=8.0)
    backend = build_backend(cfg)
    folder, _ = write_checkpoint(tmp_path / "run", cfg, backend, perturb)
    merged = export_checkpoint(folder, tmp_path / "merged")
    lora = export_checkpoint(folder, tmp_path / "lora", lora=True)
    assert json.loads((lora / METADATA_FILE).read_text())["format"] == "lora"
    assert sorted(p.name for p in lora.iterdir()) == ["README.md", METADATA_FILE, LORA_WEIGHTS_FILE]

    pipe = base_pipeline(base)
    pipe.load_lora_weights(lora)
    assert lora_modules(denoiser(pipe)) == lora_modules(backend.generator)  # every trained layer, no more
    call = generator_call(json.loads((merged / METADATA_FILE).read_text()))
    expected = one_step(DiffusionPipeline.from_pretrained(merged), call)
    torch.testing.assert_close(one_step(pipe, call), expected, rtol=0, atol=2e-5)

    # The checkpoint folder itself loads too: raw weights by default, EMA by weight name.
    raw, ema = base_pipeline(base), base_pipeline(base)
    raw.load_lora_weights(folder)
    ema.load_lora_weights(folder, weight_name=LORA_EMA_WEIGHTS_FILE)
    torch.testing.assert_close(one_step(ema, call), expected, rtol=0, atol=2e-5)
    assert not torch.allclose(one_step(raw, call), expected, rtol=0, atol=2e-5)


@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters")
def test_diffusers_converter_drops_layers_that_distar_keeps(tiny_dir, tmp_path, perturb):
    """diffusers 0.42's `convert_state_dict_to_diffusers` renames attention projections to the old
    `lora.down/up` names but leaves the others; the loader then silently skips the renamed layers."""
    cfg = ModelConfig(pretrained=str(tiny_dir("sd")), generator_lora_rank=4)
    backend = build_backend(cfg)
    perturb([p for p in backend.generator.parameters() if p.requires_grad], seed=4)
    trained = lora_modules(backend.generator)

    converted = convert_state_dict_to_diffusers(get_peft_model_state_dict(backend.generator))
    DiffusionPipeline.from_pretrained(tiny_dir("sd")).save_lora_weights(tmp_path / "converted", unet_lora_layers=converted)
    lossy = base_pipeline(tiny_dir("sd"))
    lossy.load_lora_weights(tmp_path / "converted")
    dropped = trained - lora_modules(lossy.unet)
    assert dropped and all(".attn" in name for name in dropped)

    save_diffusers_lora(backend.generator, tmp_path / "distar")
    complete = base_pipeline(tiny_dir("sd"))
    complete.load_lora_weights(tmp_path / "distar")
    assert lora_modules(complete.unet) == trained


def test_trained_lora_loads_in_plain_diffusers_and_matches_the_export(tmp_path):
    """`distar train` with a LoRA generator → checkpoint LoRA file == `distar export` merged pipeline."""
    run = tmp_path / "run"
    argv = ["train", "--config", str(CONFIGS / "tiny_sd.yaml"), f"output_dir={run}", "logging.progress_bar=false"]
    argv += ["logging.report_to=none", "sampling.every=0", "loop.max_steps=2", "loop.assistant_steps=1"]
    argv += ["checkpointing.every=0", "model.generator_lora_rank=2", "optim.generator.lr=1e-2"]
    assert main(argv) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    pipe = base_pipeline(resolve_pretrained("tiny:sd"))
    pipe.load_lora_weights(run / "checkpoint-2", weight_name=LORA_EMA_WEIGHTS_FILE)
    plain = one_step(base_pipeline(resolve_pretrained("tiny:sd")), 399)
    expected = one_step(DiffusionPipeline.from_pretrained(tmp_path / "merged"), 399)
    assert not torch.allclose(plain, expected, rtol=0, atol=1e-4)  # training moved the generator
    torch.testing.assert_close(one_step(pipe, 399), expected, rtol=0, atol=2e-5)


def test_lora_export_of_a_full_generator_is_refused(tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(pretrained=str(tiny_dir("sd")))
    folder, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    assert main(["export", str(folder), "--out", str(tmp_path / "x"), "--lora"]) == 2
