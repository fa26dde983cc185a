"""Tiny pipelines, loading by local path / tiny name, generator_init formats (DMD2-style .bin), config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file

from distar.backends import ModelConfig, build_backend
from distar.backends.loading import resolve_pretrained
from distar.config import ConfigError, load_config
from distar.testing.pipelines import save_tiny_pipeline, tiny_unet


@pytest.mark.parametrize("family, cls", [("sd", StableDiffusionPipeline), ("sdxl", StableDiffusionXLPipeline)])
def test_tiny_pipeline_round_trip_and_determinism(family, cls, tmp_path):
    a = save_tiny_pipeline(tmp_path / "a", family, "v_prediction", seed=3)
    b = save_tiny_pipeline(tmp_path / "b", family, "v_prediction", seed=3)
    c = save_tiny_pipeline(tmp_path / "c", family, "v_prediction", seed=4)
    pipe = DiffusionPipeline.from_pretrained(a)
    assert isinstance(pipe, cls) and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.num_train_timesteps == 1000
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes() != (c / weights).read_bytes()
    image = pipe("a cat", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 16, 16)


def test_tiny_pixel_model_has_no_vae(tmp_path):
    folder = save_tiny_pipeline(tmp_path, "sd", latent=False)
    assert not (folder / "vae").exists()
    assert UNet2DConditionModel.from_pretrained(folder / "unet").config.in_channels == 3
    backend = build_backend(ModelConfig(pretrained=str(folder)))
    assert backend.pipe.vae is None and backend.latent_shape == (3, 8, 8)
    x0 = torch.linspace(-1.5, 1.5, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    torch.testing.assert_close(backend.decode(x0), ((x0 + 1) / 2).clamp(0, 1))


def test_tiny_names_build_once_into_the_cache():
    path = resolve_pretrained("tiny:sdxl-v")
    unet_file = Path(path) / "unet" / "diffusion_pytorch_model.safetensors"
    assert Path(path).is_relative_to(os.environ["DISTAR_CACHE"])
    mtime = unet_file.stat().st_mtime_ns
    assert resolve_pretrained("tiny:sdxl-v") == path and unet_file.stat().st_mtime_ns == mtime
    backend = build_backend(ModelConfig(family="sdxl", pretrained="tiny:sdxl-v"))
    assert backend.prediction_type == "v_prediction" and backend.pipe.text_encoder_2 is not None


def test_loading_by_local_path_keeps_the_weights(tiny_dir):
    folder = tiny_dir("sd", "epsilon")
    backend = build_backend(ModelConfig(pretrained=str(folder)))
    saved = UNet2DConditionModel.from_pretrained(folder / "unet").state_dict()
    for name in ("reference", "assistant", "generator"):
        state = getattr(backend, name).state_dict()
        assert state.keys() == saved.keys(), name
        assert all(torch.equal(state[k], saved[k]) for k in saved), name


def _other_unet_state(family: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return {k: v.to(dtype) for k, v in tiny_unet(family).state_dict().items()}


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_generator_init_from_a_dmd2_style_state_dict(suffix, tiny_dir, tmp_path):
    """DMD2 ships e.g. dmd2_sdxl_1step_unet_fp16.bin: a diffusers-keyed fp16 UNet state dict."""
    state = _other_unet_state("sdxl", torch.float16)
    file = tmp_path / f"one_step_unet_fp16{suffix}"
    torch.save(state, file) if suffix == ".bin" else save_file(state, str(file))
    backend = build_backend(ModelConfig(family="sdxl", pretrained=str(tiny_dir("sdxl")), generator_init=str(file)))
    loaded = backend.generator.state_dict()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v.float()) for k, v in state.items())
    assert not torch.equal(backend.reference.conv_in.weight, backend.generator.conv_in.weight)


def test_generator_init_from_unet_and_pipeline_folders(tiny_dir, tmp_path):
    torch.manual_seed(7)
    unet = tiny_unet("sd")
    unet.save_pretrained(tmp_path / "unet")
    for spec in (tmp_path / "unet", tmp_path):  # a UNet folder, and a folder holding unet/
        backend = build_backend(ModelConfig(pretrained=str(tiny_dir("sd")), generator_init=str(spec)))
        assert torch.equal(backend.generator.conv_in.weight, unet.conv_in.weight)


def test_generator_init_errors(tiny_dir, tmp_path):
    sd = str(tiny_dir("sd"))
    bad = tmp_path / "sdxl_unet.bin"
    torch.save(_other_unet_state("sdxl", torch.float16), bad)  # SDXL weights for an SD reference
    with pytest.raises(ConfigError, match="does not fit the reference UNet"):
        build_backend(ModelConfig(pretrained=sd, generator_init=str(bad)))
    with pytest.raises(ConfigError, match="not a file, folder or hub id"):
        build_backend(ModelConfig(pretrained=sd, generator_init="missing.bin"))


def test_config_validation(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="does not match"):
        ModelConfig(family="sd", pretrained="tiny:sdxl")
    with pytest.raises(ConfigError, match="unknown tiny model"):
        ModelConfig(pretrained="tiny:nope")
    with pytest.raises(ConfigError, match="does not match the UNet"):
        build_backend(ModelConfig(family="sdxl", pretrained=str(tiny_dir("sd"))))
    with pytest.raises(ValueError, match="t_init"):
        build_backend(ModelConfig(pretrained=str(tiny_dir("sd")), t_init=1000))
    (tmp_path / "model.yaml").write_text("family: sdxl\npretrained: tiny:sdxl\nassistant_lora_rank: 8\n")
    cfg = load_config(ModelConfig, tmp_path / "model.yaml", ["dtype=bfloat16", "t_init=250"])
    assert (cfg.family, cfg.assistant_lora_rank, cfg.dtype, cfg.t_init) == ("sdxl", 8, "bfloat16", 250)
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config(ModelConfig, None, ["generator_lora_rank=-1"])


def test_resolution_sets_latent_size_and_sdxl_time_ids(tiny_dir):
    backend = build_backend(ModelConfig(family="sdxl", pretrained=str(tiny_dir("sdxl")), resolution=32, t_init=250))
    assert backend.latent_shape == (4, 16, 16)
    seen = []
    hook = lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"])  # noqa: E731
    backend.generator.register_forward_pre_hook(hook, with_kwargs=True)
    z = backend.sample_latents(1, torch.Generator().manual_seed(0))
    images = backend.decode(backend.generate(z, backend.encode_prompts(["a"])))
    assert images.shape == (1, 3, 32, 32)
    assert seen[0].tolist() == [[32, 32, 0, 0, 32, 32]]


def test_offloaded_text_encoders_stay_on_cpu(tiny_dir):
    backend = build_backend(ModelConfig(family="sdxl", pretrained=str(tiny_dir("sdxl")), offload_text_encoders=True))
    cond = backend.encode_prompts(["a", "b"])
    assert cond.embeds.shape[0] == 2 and backend.pipe.text_encoder_2.device.type == "cpu"


def test_generator_init_hub_file_spec(tiny_dir, tmp_path, monkeypatch):
    """'owner/repo/file' is fetched with hf_hub_download(owner/repo, file) (stubbed: no network in tests)."""
    import huggingface_hub

    state = _other_unet_state("sdxl", torch.float16)
    torch.save(state, tmp_path / "dmd2_sdxl_1step_unet_fp16.bin")
    calls = []

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    spec = "tianweiy/DMD2/dmd2_sdxl_1step_unet_fp16.bin"
    cfg = ModelConfig(family="sdxl", pretrained=str(tiny_dir("sdxl")), generator_init=spec)
    backend = build_backend(cfg)
    assert calls == [("tianweiy/DMD2", "dmd2_sdxl_1step_unet_fp16.bin")]
    assert torch.equal(backend.generator.conv_in.weight, state["conv_in.weight"].float())


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_in_one_line(tmp_path):
    import pickle

    from distar.backends.loading import read_state_dict
    from distar.config import ConfigError

    file = tmp_path / "unet.bin"
    file.write_bytes(pickle.dumps({"w": _Payload(tmp_path / "pwned")}))
    with pytest.raises(ConfigError, match=r"unet.bin: not a plain tensor checkpoint \(") as err:
        read_state_dict(file)
    assert "\n" not in str(err.value) and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_backend_schedule_is_the_zero_snr_schedulers_table(family, tmp_path):
    import diffusers

    folder = save_tiny_pipeline(tmp_path, family, "v_prediction")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = {**json.loads(config_file.read_text()), "rescale_betas_zero_snr": True}
    config_file.write_text(json.dumps(config))
    backend = build_backend(ModelConfig(family=family, pretrained=str(folder)))
    expected = diffusers.DDPMScheduler.from_config(config).alphas_cumprod
    torch.testing.assert_close(backend.schedule.alphas_cumprod.float(), expected, rtol=0, atol=1e-7)
    assert backend.schedule.zero_terminal_snr
    with pytest.raises(ConfigError, match="zero-terminal-SNR"):
        build_backend(ModelConfig(family=family, pretrained=str(folder), prediction_type="epsilon"))
