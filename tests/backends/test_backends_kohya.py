"""``distar export --lora --format kohya``: the generator LoRA as kohya tensors, applied here with the
kohya formula W + (alpha / rank) · up · down, equals the merged export."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file

from distar.backends import ModelConfig, build_backend
from distar.cli import main
from distar.export.single_file import unet_to_original
from export_helpers import write_checkpoint

ALPHA, RANK = 2.0, 4  # alpha ≠ rank: a loader that took alpha = rank would apply half the update


def apply_kohya(base: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``base`` (module path → weight, ``.`` in paths) with each ``lora_unet_<path with _>`` update added."""
    by_name = {k.removesuffix(".weight").replace(".", "_"): k for k in base if k.endswith(".weight")}
    out = dict(base)
    modules = {k.split(".")[0] for k in lora}
    for module in modules:
        down, up = lora[f"{module}.lora_down.weight"], lora[f"{module}.lora_up.weight"]
        scale = lora[f"{module}.alpha"].item() / down.shape[0]
        key = by_name[module.removeprefix("lora_unet_")]
        out[key] = base[key] + scale * (up.flatten(1) @ down.flatten(1)).reshape(base[key].shape)
    return out


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_kohya_lora_applied_independently_equals_the_merged_export(family, tiny_dir, tmp_path, perturb):
    folder = tiny_dir(family)
    cfg = ModelConfig(family=family, pretrained=str(folder), generator_lora_rank=RANK, lora_alpha=ALPHA)
    checkpoint, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    merged_dir, kohya_dir = tmp_path / "merged", tmp_path / "my-lora"
    assert main(["export", str(checkpoint), "--out", str(merged_dir)]) == 0
    assert main(["export", str(checkpoint), "--out", str(kohya_dir), "--lora", "--format", "kohya"]) == 0

    file = kohya_dir / "my-lora.safetensors"
    lora = load_file(file)
    assert all(k.startswith("lora_unet_") for k in lora)
    modules = {k.split(".")[0] for k in lora}
    assert {k.split(".", 1)[1] for k in lora} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert len(lora) == 3 * len(modules) and all(lora[f"{m}.alpha"].item() == ALPHA for m in modules)
    with safe_open(file, "pt") as f:
        header = f.metadata()
    assert (header["ss_network_dim"], float(header["ss_network_alpha"])) == (str(RANK), ALPHA)
    assert header["ss_base_model_version"] == {"sd": "sd_v1", "sdxl": "sdxl_base_v1-0"}[family]
    assert json.loads((kohya_dir / "distar.json").read_text())["lora_format"] == "kohya"

    base = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    merged = UNet2DConditionModel.from_pretrained(merged_dir, subfolder="unet").state_dict()
    if family == "sdxl":  # kohya names SDXL modules as the original network does
        assert any(m.startswith("lora_unet_input_blocks_") for m in modules)
        base_state, merged = unet_to_original(base.state_dict(), base.config), unet_to_original(merged, base.config)
    else:
        assert any(m.startswith("lora_unet_down_blocks_") for m in modules)
        base_state = base.state_dict()
    applied = apply_kohya(base_state, lora)
    assert applied.keys() == merged.keys()
    for key in merged:
        torch.testing.assert_close(applied[key], merged[key], rtol=0, atol=1e-6, msg=key)
    changed = [k for k in merged if not torch.equal(base_state[k], merged[k])]
    assert len(changed) == len(modules)


def test_diffusers_reads_the_kohya_file(tiny_dir, tmp_path, perturb):
    folder = tiny_dir("sdxl")
    cfg = ModelConfig(family="sdxl", pretrained=str(folder), generator_lora_rank=RANK, lora_alpha=ALPHA)
    checkpoint, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "merged")]) == 0
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "k"), "--lora", "--format", "kohya"]) == 0
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.load_lora_weights(tmp_path / "k", weight_name="k.safetensors")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged", subfolder="unet").state_dict()
    for key, value in pipe.unet.state_dict().items():
        torch.testing.assert_close(value, merged[key], rtol=0, atol=1e-6, msg=key)
