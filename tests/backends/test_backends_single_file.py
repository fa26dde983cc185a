"""``distar export --format single-file``: the original SD/SDXL key layout, read back by diffusers'
``from_single_file``, and its key set against the published architectures' original layout."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from distar.backends import ModelConfig, build_backend
from distar.cli import main
from distar.export.pipeline import generator_call
from distar.export.single_file import (
    COMFYUI_WORKFLOW_FILE,
    original_state_dict,
    sd_turbo_denoise,
    write_single_file,
)
from distar.testing.architectures import ARCHITECTURES, CLIP_BIGG, CLIP_L, SD15_UNET, SD15_VAE, SDXL_UNET, SDXL_VAE
from distar.testing.pipelines import TINY_TIME_EMBED_DIM, save_tiny_pipeline
from export_helpers import PROMPT, one_step, read_png, write_checkpoint

#: Width of the second text encoder of the SDXL folders here: ``from_single_file`` tells SDXL's two
#: CLIP encoders apart by width (768 and 1280 in the real model), so the tiny ones must differ too.
WIDE = 24


def _sdxl_with_distinct_encoders(folder):
    """Give a tiny SDXL folder a :data:`WIDE` second text encoder and the UNet that fits it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        config = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
        config.update(dict(hidden_size=WIDE, intermediate_size=2 * WIDE, projection_dim=WIDE))
        CLIPTextModelWithProjection(config).save_pretrained(folder / "text_encoder_2")
        first = CLIPTextConfig.from_pretrained(folder / "text_encoder").hidden_size
        unet = dict(UNet2DConditionModel.load_config(folder / "unet"))
        pooled = 6 * TINY_TIME_EMBED_DIM + WIDE  # micro-conditioning ids and the second encoder's pooled output
        unet.update(cross_attention_dim=first + WIDE, projection_class_embeddings_input_dim=pooled)
        UNet2DConditionModel.from_config(unet).save_pretrained(folder / "unet")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family → a tiny pipeline folder whose single file ``from_single_file`` can read."""
    sd = save_tiny_pipeline(tmp_path_factory.mktemp("sd"), "sd")
    sdxl = _sdxl_with_distinct_encoders(save_tiny_pipeline(tmp_path_factory.mktemp("sdxl"), "sdxl"))
    sd2 = save_tiny_pipeline(tmp_path_factory.mktemp("sd2"), "sd", "v_prediction")
    config = json.loads((sd2 / "text_encoder" / "config.json").read_text())
    (sd2 / "text_encoder" / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))  # OpenCLIP-H's
    return {"sd": sd, "sdxl": sdxl, "sd2": sd2}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_single_file_loads_in_diffusers_and_reproduces_generate(family, folders, tmp_path, perturb):
    cfg = ModelConfig(family=family, pretrained=str(folders[family]))  # t_init 399
    checkpoint, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    pipeline_dir, single_dir = tmp_path / "pipeline", tmp_path / f"{family}-one-step"
    assert main(["export", str(checkpoint), "--out", str(pipeline_dir)]) == 0
    assert main(["export", str(checkpoint), "--out", str(single_dir), "--format", "single-file"]) == 0
    png = tmp_path / "generate.png"
    assert main(["generate", "--model", str(pipeline_dir), "--prompt", PROMPT, "--seed", "7", "--out", str(png)]) == 0

    file = single_dir / f"{single_dir.name}.safetensors"
    metadata = json.loads((single_dir / "distar.json").read_text())
    assert metadata["format"] == "single-file" and metadata["file"] == file.name
    assert f'from_single_file("path/to/this/folder/{file.name}"' in (single_dir / "README.md").read_text()
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_single_file(str(file), config=str(pipeline_dir), local_files_only=True)
    reference = cls.from_pretrained(pipeline_dir)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2")[: 4 if family == "sdxl" else 3]:
        loaded, exported = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert loaded.keys() == exported.keys()
        assert all(torch.equal(loaded[k], exported[k]) for k in exported), name
    image = one_step(pipe, generator_call(metadata), seed=7)[0]
    assert (image - read_png(png)).abs().max() <= 2 / 255 + 1e-6

    assert main(["generate", "--model", str(single_dir), "--prompt", PROMPT, "--out", str(tmp_path / "x.png")]) == 2
    with safe_open(file, "pt") as f:
        header = f.metadata()
    assert json.loads(header["distar"])["t_init"] == cfg.t_init
    architecture = "stable-diffusion-xl-v1-base" if family == "sdxl" else "stable-diffusion-v1"
    assert header["modelspec.architecture"] == architecture
    workflow = json.loads((single_dir / COMFYUI_WORKFLOW_FILE).read_text())
    nodes = {node["class_type"]: node["inputs"] for node in workflow.values()}
    assert nodes["CheckpointLoaderSimple"]["ckpt_name"] == file.name
    assert nodes["SDTurboScheduler"] == {"model": ["1", 0], "steps": 1, "denoise": 0.4}  # timestep 399
    assert nodes["SamplerCustom"]["cfg"] == 1.0 and nodes["KSamplerSelect"]["sampler_name"] == "lcm"


def test_sd2_text_encoder_is_written_as_open_clip(folders, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(folders["sd2"])
    file = tmp_path / "sd2.safetensors"
    write_single_file(pipe, tmp_path, {"file": file.name, "t_init": 999, "resolution": 16})
    with safe_open(file, "pt") as f:
        keys, header = set(f.keys()), f.metadata()
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    assert header["modelspec.architecture"] == "stable-diffusion-v2-768-v"
    loaded = StableDiffusionPipeline.from_single_file(str(file), config=str(folders["sd2"]), local_files_only=True)
    expected = pipe.text_encoder.state_dict()
    assert all(torch.equal(loaded.text_encoder.state_dict()[k], v) for k, v in expected.items())
    nodes = {n["class_type"]: n["inputs"] for n in json.loads((tmp_path / COMFYUI_WORKFLOW_FILE).read_text()).values()}
    assert nodes["SDTurboScheduler"]["denoise"] == 1.0


def test_single_file_export_refuses_other_formats(folders, tmp_path, perturb):
    cfg = ModelConfig(family="sd", pretrained=str(folders["sd"]))
    checkpoint, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "a"), "--format", "single-file", "--lora"]) == 2
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "b"), "--format", "kohya"]) == 2


def test_sd3_has_no_single_file_or_kohya_export(tiny_dir, tmp_path, perturb, capsys):
    cfg = ModelConfig(family="sd3", pretrained=str(tiny_dir("sd3")), generator_lora_rank=2)
    checkpoint, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "a"), "--format", "single-file"]) == 2
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "b"), "--lora", "--format", "kohya"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert [e for e in errors if "error" in e] == [
        "distar export: error: --format: only SD 1.x/2.x and SDXL have the original layouts, not StableDiffusion3Pipeline"
    ] * 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sd_turbo_denoise():
    assert sd_turbo_denoise([999]) == 1.0
    assert sd_turbo_denoise([399]) == 0.4
    assert sd_turbo_denoise([999, 899, 799]) == 1.0
    assert sd_turbo_denoise([500]) is None
    assert sd_turbo_denoise([999, 749]) is None


# The original layout, enumerated from the published architectures the way the original networks
# (CompVis/Stability's UNetModel, AutoencoderKL, and the CLIP / OpenCLIP text towers) build their modules.

_WB = ("weight", "bias")


def _params(prefix, *modules):
    return {f"{prefix}{m}.{p}" for m in modules for p in _WB}


def _resblock(prefix, channels_in, channels_out):
    keys = _params(prefix, "in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
    return keys | (_params(prefix, "skip_connection") if channels_in != channels_out else set())


def _transformer(prefix, depth):
    keys = _params(prefix, "norm", "proj_in", "proj_out")
    for d in range(depth):
        block = f"{prefix}transformer_blocks.{d}."
        keys |= {f"{block}attn{a}.to_{p}.weight" for a in (1, 2) for p in "qkv"}
        keys |= _params(block, "attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
        keys |= _params(block, "norm1", "norm2", "norm3")
    return keys


def _ldm_unet(model_channels, channel_mult, num_res_blocks, depths, middle_depth, label_emb):
    """``model.diffusion_model.*`` of a UNetModel; ``depths[level]`` transformer blocks per attention (0: none)."""
    keys = _params("", "time_embed.0", "time_embed.2", "input_blocks.0.0", "out.0", "out.2")
    keys |= _params("", "label_emb.0.0", "label_emb.0.2") if label_emb else set()
    channels, skips, index = model_channels, [model_channels], 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            keys |= _resblock(f"input_blocks.{index}.0.", channels, mult * model_channels)
            channels = mult * model_channels
            keys |= _transformer(f"input_blocks.{index}.1.", depths[level]) if depths[level] else set()
            skips.append(channels)
            index += 1
        if level != len(channel_mult) - 1:
            keys |= _params(f"input_blocks.{index}.0.", "op")
            skips.append(channels)
            index += 1
    keys |= _resblock("middle_block.0.", channels, channels) | _transformer("middle_block.1.", middle_depth)
    keys |= _resblock("middle_block.2.", channels, channels)
    index = 0
    for level in reversed(range(len(channel_mult))):
        for i in range(num_res_blocks + 1):
            keys |= _resblock(f"output_blocks.{index}.0.", channels + skips.pop(), channel_mult[level] * model_channels)
            channels = channel_mult[level] * model_channels
            keys |= _transformer(f"output_blocks.{index}.1.", depths[level]) if depths[level] else set()
            if level and i == num_res_blocks:
                keys |= _params(f"output_blocks.{index}.{2 if depths[level] else 1}.", "conv")
            index += 1
    return {"model.diffusion_model." + k for k in keys}


def _ldm_vae(ch, ch_mult, num_res_blocks):
    """``first_stage_model.*`` of the original AutoencoderKL."""

    def block(prefix, cin, cout):
        shortcut = _params(prefix, "nin_shortcut") if cin != cout else set()
        return _params(prefix, "norm1", "conv1", "norm2", "conv2") | shortcut

    def mid(prefix, c):
        return block(f"{prefix}mid.block_1.", c, c) | block(f"{prefix}mid.block_2.", c, c) | _params(
            f"{prefix}mid.attn_1.", "norm", "q", "k", "v", "proj_out"
        )

    keys = _params("", "quant_conv", "post_quant_conv")
    for coder in ("encoder.", "decoder."):
        keys |= _params(coder, "conv_in", "norm_out", "conv_out")
    cin = ch
    for i, mult in enumerate(ch_mult):
        for j in range(num_res_blocks):
            keys |= block(f"encoder.down.{i}.block.{j}.", cin, ch * mult)
            cin = ch * mult
        keys |= _params(f"encoder.down.{i}.downsample.", "conv") if i != len(ch_mult) - 1 else set()
    keys |= mid("encoder.", cin) | mid("decoder.", cin)
    for i in reversed(range(len(ch_mult))):
        for j in range(num_res_blocks + 1):
            keys |= block(f"decoder.up.{i}.block.{j}.", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
        keys |= _params(f"decoder.up.{i}.upsample.", "conv") if i else set()
    return {"first_stage_model." + k for k in keys}


def _hf_clip(prefix, layers):
    keys = {f"{prefix}text_model.embeddings.{e}_embedding.weight" for e in ("token", "position")}
    keys |= _params(f"{prefix}text_model.", "final_layer_norm")
    for i in range(layers):
        layer = f"{prefix}text_model.encoder.layers.{i}."
        keys |= _params(layer, *(f"self_attn.{p}_proj" for p in "qkv"), "self_attn.out_proj")
        keys |= _params(layer, "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2")
    return keys


def _open_clip(prefix, layers):
    keys = {f"{prefix}{k}" for k in ("token_embedding.weight", "positional_embedding", "text_projection")}
    keys |= _params(prefix, "ln_final")
    for i in range(layers):
        block = f"{prefix}transformer.resblocks.{i}."
        keys |= {block + "attn.in_proj_weight", block + "attn.in_proj_bias"}
        keys |= _params(block, "attn.out_proj", "ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj")
    return keys


def _published(name):
    """The published architecture's components, built on the meta device (no weights, no download)."""
    components = ARCHITECTURES[name].components
    with torch.device("meta"):
        unet = UNet2DConditionModel(**components["unet"][2])
        vae = AutoencoderKL(**components["vae"][2])
        encoders = [
            (CLIPTextModel if cls == "CLIPTextModel" else CLIPTextModelWithProjection)(CLIPTextConfig(**config))
            for part in ("text_encoder", "text_encoder_2") if part in components
            for _, cls, config in [components[part]]
        ]
    return unet, vae, *encoders


def test_key_sets_match_the_original_layouts():
    assert SD15_UNET["layers_per_block"] == SDXL_UNET["layers_per_block"] == 2 and SD15_VAE["layers_per_block"] == 2
    expected_sd15 = (
        _ldm_unet(320, (1, 2, 4, 4), 2, (1, 1, 1, 0), middle_depth=1, label_emb=False)
        | _ldm_vae(128, (1, 2, 4, 4), 2)
        | _hf_clip("cond_stage_model.transformer.", CLIP_L["num_hidden_layers"])
    )
    expected_sdxl = (
        _ldm_unet(320, (1, 2, 4), 2, (0, 2, 10), middle_depth=10, label_emb=True)
        | _ldm_vae(128, (1, 2, 4, 4), 2)
        | _hf_clip("conditioner.embedders.0.transformer.", CLIP_L["num_hidden_layers"])
        | _open_clip("conditioner.embedders.1.model.", CLIP_BIGG["num_hidden_layers"])
    )
    assert SDXL_VAE["block_out_channels"] == SD15_VAE["block_out_channels"] == (128, 256, 512, 512)
    sd15, sdxl = original_state_dict(*_published("sd15")), original_state_dict(*_published("sdxl"))
    assert set(sd15) == expected_sd15
    # the original SDXL file also holds OpenCLIP's logit_scale, which no part of the pipeline uses
    assert set(sdxl) == expected_sdxl
    assert sdxl["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)
    assert sdxl["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
