"""FLUX backend on tiny models: prompt encoding, reference x0 = the pipeline's packed transformer call with
its guidance input, read by its flow scheduler; generator at σ = 1; LoRA layouts; export (1 and 4 steps)
reproduced by plain diffusers and `distar generate`."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxPipeline

from distar.backends import ModelConfig, build_backend
from distar.backends.lora import lora_layers
from distar.cli import main
from distar.diffusion import FlowMatchSchedule
from distar.export.pipeline import METADATA_FILE, export_checkpoint
from distar.protocols import Backend
from export_helpers import PROMPT, backend_image, diffusers_image, read_png, write_checkpoint

SIGMAS = [0.05, 0.5, 0.97]


@pytest.fixture(scope="module")
def case(tiny_dir):
    folder = tiny_dir("flux")
    return folder, build_backend(ModelConfig(family="flux", pretrained=str(folder), resolution=16, guidance=4.0))


def test_is_a_backend_on_the_dynamically_shifted_flow_schedule(case):
    folder, backend = case
    assert isinstance(backend, Backend) and isinstance(backend.schedule, FlowMatchSchedule)
    assert backend.latent_shape == (4, 8, 8) and backend.generator_times == [1.0]
    config = DiffusionPipeline.from_pretrained(folder).scheduler.config
    expected = FlowMatchSchedule.from_scheduler_config(config, image_seq_len=16).shift
    assert backend.schedule.shift == expected != config.shift


def test_reference_x0_is_the_pipeline_transformer_step(case):
    folder, backend = case
    pipe = DiffusionPipeline.from_pretrained(folder)
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, None, device="cpu")
    one = backend.encode_prompts([PROMPT])
    torch.testing.assert_close(one.embeds, embeds, rtol=1e-4, atol=1e-4)  # T5 as loaded two ways: last-bit noise
    torch.testing.assert_close(one.pooled, pooled)
    cond = one.repeat(len(SIGMAS))
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(len(SIGMAS), *backend.latent_shape, generator=gen)
    got = backend.reference_x0(x_t, torch.tensor(SIGMAS), cond)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=1.0, use_dynamic_shifting=False)
    image_ids = FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    for i, sigma in enumerate(SIGMAS):
        scheduler.set_timesteps(sigmas=[sigma])
        step = scheduler.timesteps[0]
        packed = FluxPipeline._pack_latents(x_t[i : i + 1], 1, 4, 8, 8)
        with torch.no_grad():
            v = pipe.transformer(
                hidden_states=packed,
                timestep=step[None] / 1000,
                guidance=torch.tensor([4.0]),
                pooled_projections=pooled,
                encoder_hidden_states=embeds,
                txt_ids=text_ids,
                img_ids=image_ids,
            ).sample
        expected = FluxPipeline._unpack_latents(scheduler.step(v, step, packed).prev_sample, 16, 16, 2)
        torch.testing.assert_close(got[i : i + 1], expected, rtol=1e-4, atol=1e-5)
    other = build_backend(ModelConfig(family="flux", pretrained=str(folder), resolution=16, guidance=1.0))
    assert not torch.allclose(other.reference_x0(x_t, torch.tensor(SIGMAS), cond), got)  # guidance is an input


def test_cfg_pair_and_gradient_to_x_t(case):
    _, backend = case
    x_t = torch.randn(2, *backend.latent_shape, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    t = torch.tensor([0.3, 0.8])
    cond = backend.encode_prompts(["a", "b"])
    x0_c, x0_u = backend.reference_x0_cond_uncond(x_t, t, cond)
    torch.testing.assert_close(x0_c, backend.reference_x0(x_t, t, cond), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0_u, backend.reference_x0(x_t, t, backend.uncond.repeat(2)), rtol=1e-5, atol=1e-5)
    (x0_c.square().sum() + x0_u.sum()).backward()
    assert x_t.grad.abs().sum() > 0


def test_shared_lora_and_checkpointing(tiny_dir, perturb):
    cfg = dict(family="flux", pretrained=str(tiny_dir("flux")), resolution=16, assistant_lora_rank=4)
    plain = build_backend(ModelConfig(**cfg))
    checkpointed = build_backend(ModelConfig(**cfg, gradient_checkpointing=True))
    assert plain.reference is None and lora_layers(plain.assistant)
    perturb([p for n, p in plain.assistant.named_parameters() if "lora_" in n], seed=2, scale=0.3)
    checkpointed.assistant.load_state_dict(plain.assistant.state_dict())
    reference = build_backend(ModelConfig(family="flux", pretrained=cfg["pretrained"], resolution=16))
    x_t = torch.randn(2, *plain.latent_shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.2, 0.7])
    cond = plain.encode_prompts(["a", "b"])
    with torch.no_grad():
        assert torch.equal(plain.reference_x0(x_t, t, cond), reference.reference_x0(x_t, t, cond))
        assert not torch.allclose(plain.assistant_x0(x_t, t, cond), reference.reference_x0(x_t, t, cond))

    def grad(backend):
        x = x_t.clone().requires_grad_(True)
        ((backend.reference_x0(x, t, cond) - backend.assistant_x0(x, t, cond)) ** 2).sum().backward()
        return x.grad

    torch.testing.assert_close(grad(checkpointed), grad(plain), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 4])
def test_export_reload_and_generate_reproduce_the_generator(steps, tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(family="flux", pretrained=str(tiny_dir("flux")), resolution=16, steps=steps, generator_lora_rank=4)
    backend = build_backend(cfg)
    folder, _ = write_checkpoint(tmp_path / "run", cfg, backend, perturb)
    expected = backend_image(backend, seed=5)
    out = export_checkpoint(folder, tmp_path / "export")
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["guidance"] == 3.5 and metadata["timesteps"] == cfg.generator_timesteps
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    torch.testing.assert_close(diffusers_image(out, seed=5), expected, rtol=0, atol=2e-5)
    png = tmp_path / "flux.png"
    assert main(["generate", "--model", str(out), "--prompt", PROMPT, "--seed", "5", "--out", str(png)]) == 0
    assert (read_png(png) - expected[0]).abs().max() <= 1 / 255 + 1e-6
