"""SD3 backend on tiny models: prompt encoding, reference x0 = the pipeline's transformer call read by its
flow scheduler, CFG batching, the generator at σ = t_init/1000, VAE shift, export and `distar generate`."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from distar.backends import ModelConfig, build_backend
from distar.backends.loading import absent_components
from distar.cli import main
from distar.config import ConfigError
from distar.diffusion import FlowMatchSchedule
from distar.export.pipeline import METADATA_FILE, export_checkpoint
from distar.protocols import Backend
from distar.testing.pipelines import TINY_SD3_SHIFT
from export_helpers import PROMPT, backend_image, diffusers_image, read_png, write_checkpoint

SIGMAS = [0.05, 0.5, 0.97]


@pytest.fixture(scope="module", params=[True, False], ids=["t5", "no-t5"])
def case(request, tiny_dir):
    folder = tiny_dir("sd3", t5=request.param)
    return folder, build_backend(ModelConfig(family="sd3", pretrained=str(folder), t5=request.param))


def noised(backend, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(len(SIGMAS), *backend.latent_shape, generator=gen)
    t = torch.tensor(SIGMAS)
    return backend.schedule.add_noise(x0, torch.randn(x0.shape, generator=gen), t), t


def test_is_a_backend_on_the_shifted_flow_schedule(case):
    _, backend = case
    assert isinstance(backend, Backend) and isinstance(backend.schedule, FlowMatchSchedule)
    assert backend.schedule.shift == TINY_SD3_SHIFT and backend.t_init == 1000 and backend.generator_times == [1.0]
    assert backend.latent_shape == (4, 8, 8) and backend.resolution == 16


def test_prompt_encoding_matches_the_pipeline(case):
    folder, backend = case
    pipe = DiffusionPipeline.from_pretrained(folder, **absent_components(folder))
    prompts = ["a red cube", "two cats"]
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompts, None, None, device="cpu")
    cond = backend.encode_prompts(prompts)
    torch.testing.assert_close(cond.embeds, embeds)
    torch.testing.assert_close(cond.pooled, pooled)
    torch.testing.assert_close(backend.uncond.repeat(2).embeds, negative)
    torch.testing.assert_close(backend.uncond.repeat(2).pooled, negative_pooled)
    assert cond.embeds.shape[1] == 77 + 256  # CLIP tokens, then T5 tokens (zeros without T5)
    assert (cond.embeds[:, 77:].abs().sum() > 0) == (pipe.text_encoder_3 is not None)


def test_reference_x0_is_the_pipeline_transformer_step(case):
    """x̂0_ref(x_t) equals one Euler step to σ = 0 of the pipeline's own transformer and scheduler."""
    folder, backend = case
    pipe = DiffusionPipeline.from_pretrained(folder, **absent_components(folder))
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, None, None, device="cpu", do_classifier_free_guidance=False)
    x_t, t = noised(backend)
    got = backend.reference_x0(x_t, t, backend.encode_prompts([PROMPT] * len(t)))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=1.0)
    for i, sigma in enumerate(SIGMAS):
        scheduler.set_timesteps(sigmas=[sigma])
        step = scheduler.timesteps[0]
        with torch.no_grad():
            v = pipe.transformer(
                hidden_states=x_t[i : i + 1], timestep=step[None], encoder_hidden_states=embeds, pooled_projections=pooled
            ).sample
        expected = scheduler.step(v, step, x_t[i : i + 1]).prev_sample
        torch.testing.assert_close(got[i : i + 1], expected, rtol=1e-4, atol=1e-5)


def test_cfg_batched_forward_equals_two_forwards_and_reaches_x_t(case):
    _, backend = case
    x_t, t = noised(backend)
    x_t.requires_grad_(True)
    cond = backend.encode_prompts(["a", "b c", "d e f"])
    x0_c, x0_u = backend.reference_x0_cond_uncond(x_t, t, cond)
    torch.testing.assert_close(x0_c, backend.reference_x0(x_t, t, cond), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0_u, backend.reference_x0(x_t, t, backend.uncond.repeat(3)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(x0_c, x0_u)
    (x0_c.square().sum() + x0_u.sum()).backward()
    assert x_t.grad.abs().sum() > 0 and torch.isfinite(x_t.grad).all()
    assert all(p.grad is None for p in backend.reference.parameters())


def test_generator_is_the_transformer_at_sigma_one(case):
    _, backend = case
    seen = []
    handle = backend.generator.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["timestep"].clone()), with_kwargs=True
    )
    z = backend.sample_latents(2, torch.Generator().manual_seed(1))
    cond = backend.encode_prompts(["a", "b"])
    x0 = backend.generate(z, cond)
    handle.remove()
    assert len(seen) == 1 and seen[0].tolist() == [1000.0, 1000.0]
    torch.testing.assert_close(x0, backend.reference_x0(z, torch.ones(2), cond))
    x0.sum().backward()
    assert all(p.grad is not None for p in backend.generator_parameters())
    backend.generator.zero_grad(set_to_none=True)


def test_decode_undoes_the_vae_scale_and_shift(case):
    _, backend = case
    x0 = backend.sample_latents(2, torch.Generator().manual_seed(2)).requires_grad_(True)
    images = backend.decode(x0)
    vae = backend.pipe.vae
    with torch.no_grad():
        expected = vae.decode(x0 / vae.config.scaling_factor + vae.config.shift_factor).sample
    torch.testing.assert_close(images.detach(), ((expected + 1) / 2).clamp(0, 1))
    images.mean().backward()
    assert x0.grad.abs().sum() > 0


def test_flow_config_errors(tiny_dir):
    for bad, match in [
        (dict(t_init=0), "t_init"),
        (dict(t_init=1001), "t_init"),
        (dict(prediction_type="epsilon"), "prediction_type"),
        (dict(max_sequence_length=600), "max_sequence_length"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ModelConfig(family="sd3", pretrained="tiny:sd3", **bad)
    with pytest.raises(ConfigError, match="transformer/"):
        build_backend(ModelConfig(family="sd3", pretrained=str(tiny_dir("sd"))))


@pytest.mark.parametrize("t_init", [1000, 800])
def test_export_reload_and_generate_reproduce_the_generator(t_init, tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(family="sd3", pretrained=str(tiny_dir("sd3")), t_init=t_init)
    backend = build_backend(cfg)
    folder, _ = write_checkpoint(tmp_path / "run", cfg, backend, perturb)
    expected = backend_image(backend, seed=42)

    out = export_checkpoint(folder, tmp_path / "export")
    assert json.loads((out / METADATA_FILE).read_text())["t_init"] == t_init
    assert f"sigmas=[{t_init / 1000:g}]" in (out / "README.md").read_text()
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["scheduler"][1] == "FlowMatchEulerDiscreteScheduler"
    torch.testing.assert_close(diffusers_image(out, seed=42), expected, rtol=0, atol=2e-5)
    if t_init == 1000:  # σ = 1: the pipeline's default one-step call is already the generator
        pipe = DiffusionPipeline.from_pretrained(out)
        generator = torch.Generator().manual_seed(42)
        image = pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, generator=generator, output_type="pt").images
        torch.testing.assert_close(image, expected, rtol=0, atol=2e-5)

    png = tmp_path / "sd3.png"
    assert main(["generate", "--model", str(out), "--prompt", PROMPT, "--seed", "42", "--out", str(png)]) == 0
    assert (read_png(png) - expected[0]).abs().max() <= 1 / 255 + 1e-6


def test_export_without_t5_has_no_t5(tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(family="sd3", pretrained=str(tiny_dir("sd3")), t5=False)
    backend = build_backend(cfg)
    assert backend.pipe.text_encoder_3 is None
    folder, _ = write_checkpoint(tmp_path / "run", cfg, backend, perturb)
    out = export_checkpoint(folder, tmp_path / "export")
    assert json.loads((out / "model_index.json").read_text())["text_encoder_3"] == [None, None]
    assert "text_encoder_3=None, tokenizer_3=None" in (out / "README.md").read_text()
    torch.testing.assert_close(diffusers_image(out, seed=1), backend_image(backend, seed=1), rtol=0, atol=2e-5)
