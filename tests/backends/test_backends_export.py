"""Checkpoint → diffusers export, plain-diffusers reload, and ``distar generate``: all give g_θ's image."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distar.backends import ModelConfig, build_backend
from distar.cli import main
from distar.config import ConfigError, to_dict
from distar.export.pipeline import METADATA_FILE, export_checkpoint, pipeline_from_checkpoint
from distar.train.checkpoint import write_manifest
from export_helpers import PROMPT, backend_image, diffusers_image, read_png, write_checkpoint


def test_export_reload_and_generate_reproduce_the_generator(family, tiny_dir, tmp_path, perturb):
    family, prediction_type = family
    t_init = 399 if prediction_type == "epsilon" else 250
    cfg = ModelConfig(family=family, pretrained=str(tiny_dir(family, prediction_type)), t_init=t_init)
    backend = build_backend(cfg)
    folder, _ = write_checkpoint(tmp_path / "run", cfg, backend, perturb)
    expected = backend_image(backend, seed=42)  # decode(g(z, c)) with the EMA weights

    out = export_checkpoint(folder, tmp_path / "export")
    assert json.loads((out / METADATA_FILE).read_text())["t_init"] == t_init
    assert f"timesteps=[{t_init}]" in (out / "README.md").read_text()
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    assert index["scheduler"][1] == "LCMScheduler"
    torch.testing.assert_close(diffusers_image(out, seed=42), expected, rtol=0, atol=2e-5)

    for model in (out, tmp_path / "run"):  # an exported folder, and a run folder (latest checkpoint)
        png = tmp_path / f"{model.name}.png"
        assert main(["generate", "--model", str(model), "--prompt", PROMPT, "--seed", "42", "--out", str(png)]) == 0
        assert (read_png(png) - expected[0]).abs().max() <= 1 / 255 + 1e-6


def test_raw_weights_without_ema(tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(pretrained=str(tiny_dir("sd")))
    backend = build_backend(cfg)
    folder, raw = write_checkpoint(tmp_path / "run", cfg, backend, perturb)
    unet = pipeline_from_checkpoint(folder, use_ema=False).unet
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in raw.items())
    ema_unet = pipeline_from_checkpoint(folder).unet
    assert not torch.equal(ema_unet.conv_in.weight, unet.conv_in.weight)


def test_lora_generator_is_exported_merged(tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(pretrained=str(tiny_dir("sd")), generator_lora_rank=4, assistant_lora_rank=4)
    bf16 = ModelConfig(pretrained=cfg.pretrained, generator_lora_rank=4, dtype="bfloat16")
    folder, _ = write_checkpoint(tmp_path / "bf16", bf16, build_backend(bf16), perturb, ema=False)
    assert pipeline_from_checkpoint(folder).unet.dtype == torch.float32  # exports merge in float32
    backend = build_backend(cfg)
    folder, _ = write_checkpoint(tmp_path / "run", cfg, backend, perturb, ema=False)
    expected = backend_image(backend, seed=3)
    out = export_checkpoint(folder, tmp_path / "export")
    assert not any("lora" in k for k in load_file(out / "unet" / "diffusion_pytorch_model.safetensors"))
    torch.testing.assert_close(diffusers_image(out, seed=3), expected, rtol=0, atol=2e-5)


def test_generator_keys_are_checked_strictly(tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(pretrained=str(tiny_dir("sd")))
    folder, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb, ema=False)
    lora_cfg = ModelConfig(pretrained=cfg.pretrained, generator_lora_rank=4)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(lora_cfg)}))  # LoRA config, full weights
    write_manifest(folder)
    with pytest.raises(ConfigError, match="does not match the trainable weights"):
        pipeline_from_checkpoint(folder)
    assert main(["export", str(folder), "--out", str(tmp_path / "x")]) == 2


def test_export_protects_existing_folders(tiny_dir, tmp_path, perturb, capsys):
    cfg = ModelConfig(pretrained=str(tiny_dir("sd")))
    folder, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(folder), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["export", str(folder), "--out", str(out), "--overwrite", "--dtype", "float16"]) == 0
    assert (out / "model_index.json").is_file() and not (out / "keep.txt").exists()
    saved = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in saved.values()} == {torch.float16}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no temp folders left


def test_weights_that_overflow_the_export_dtype_are_not_written(tiny_dir, tmp_path, perturb, capsys):
    cfg = ModelConfig(pretrained=str(tiny_dir("sd")))

    def huge(params, seed):  # finite in float32 (as after optim.generator.lr=1e30), inf in float16
        perturb(params, seed)
        if seed == 10:  # the raw weights; the "EMA" ones are perturbed from them
            with torch.no_grad():
                params[0].mul_(1e30)

    folder, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), huge)
    out = tmp_path / "export"
    assert main(["export", str(folder), "--out", str(out), "--dtype", "float16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("distar export: error: ") and "not finite in float16" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]
    assert main(["export", str(folder), "--out", str(out)]) == 0  # float32 holds them
    saved = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_pixel_space_generates_but_does_not_export(tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(pretrained=str(tiny_dir("sd", "epsilon", latent=False)))
    backend = build_backend(cfg)
    folder, _ = write_checkpoint(tmp_path / "run", cfg, backend, perturb)
    expected = backend_image(backend, seed=9)
    png = tmp_path / "pixel.png"
    assert main(["generate", "--model", str(folder), "--prompt", PROMPT, "--seed", "9", "--out", str(png)]) == 0
    assert (read_png(png) - expected[0]).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ConfigError, match="pixel-space"):
        export_checkpoint(folder, tmp_path / "export")


def test_generate_reports_a_missing_model(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "no such folder" in capsys.readouterr().err
