"""SD/SDXL backends on tiny models: x0 conversion, CFG batching, frozen reference, generator, decode."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline

from distar.backends import ModelConfig, build_backend
from distar.protocols import Backend


@pytest.fixture(scope="module")
def case(family, tiny_dir):
    family, prediction_type = family
    folder = tiny_dir(family, prediction_type)
    torch.manual_seed(0)
    backend = build_backend(ModelConfig(family=family, pretrained=str(folder)))
    return family, folder, backend


def noised(backend, batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, *backend.latent_shape, generator=gen)
    t = torch.tensor([5, 399, 900])[:batch]
    return backend.schedule.add_noise(x0, torch.randn(x0.shape, generator=gen), t), t


def test_is_a_backend(case):
    _, _, backend = case
    assert isinstance(backend, Backend)
    assert backend.generator is not backend.assistant and backend.reference not in (None, backend.assistant)


def test_prompt_encoding_matches_text_encoders(case):
    family, _, backend = case
    prompts = ["a red cube", "two cats"]
    cond = backend.encode_prompts(prompts)
    pipe = backend.pipe
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    if family == "sd":
        assert torch.allclose(cond.embeds, pipe.text_encoder(ids)[0])
        assert cond.pooled is None
        uncond_ids = pipe.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert torch.allclose(backend.uncond.embeds, pipe.text_encoder(uncond_ids)[0])
    else:
        out1 = pipe.text_encoder(ids, output_hidden_states=True)
        out2 = pipe.text_encoder_2(ids, output_hidden_states=True)
        assert torch.allclose(cond.embeds, torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], -1))
        assert torch.allclose(cond.pooled, out2.text_embeds)
        # SDXL's force_zeros_for_empty_prompt: the unconditional embeddings are zeros.
        assert backend.uncond.embeds.abs().sum() == 0 and backend.uncond.pooled.abs().sum() == 0


def test_reference_x0_matches_pipeline_unet_and_scheduler(case):
    """x̂0_ref(x_t) equals the saved pipeline's own UNet output converted by its scheduler (§1)."""
    family, folder, backend = case
    pipe = DiffusionPipeline.from_pretrained(folder)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    prompt = "a blue sphere"
    x_t, t = noised(backend)
    got = backend.reference_x0(x_t, t, backend.encode_prompts([prompt] * len(t)))
    if family == "sd":
        embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
        kwargs = {}
    else:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        time_ids = pipe._get_add_time_ids(
            (16, 16), (0, 0), (16, 16), embeds.dtype, pipe.text_encoder_2.config.projection_dim
        )
        kwargs = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    for i, step in enumerate(t.tolist()):
        with torch.no_grad():
            out = pipe.unet(x_t[i : i + 1], step, encoder_hidden_states=embeds, **kwargs).sample
        expected = scheduler.step(out, step, x_t[i : i + 1]).pred_original_sample
        torch.testing.assert_close(got[i : i + 1], expected, rtol=1e-4, atol=1e-5)


def test_cfg_batched_forward_equals_two_forwards(case):
    _, _, backend = case
    x_t, t = noised(backend)
    cond = backend.encode_prompts(["a", "b c", "d e f"])
    x0_c, x0_u = backend.reference_x0_cond_uncond(x_t, t, cond)
    torch.testing.assert_close(x0_c, backend.reference_x0(x_t, t, cond), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0_u, backend.reference_x0(x_t, t, backend.uncond.repeat(3)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(x0_c, x0_u)


def test_reference_frozen_but_gradient_reaches_x_t(case):
    _, _, backend = case
    x_t, t = noised(backend)
    x_t.requires_grad_(True)
    cond = backend.encode_prompts(["a", "b", "c"])
    x0_c, x0_u = backend.reference_x0_cond_uncond(x_t, t, cond)
    (x0_c.square().sum() + backend.reference_x0(x_t, t, cond).sum() + x0_u.sum()).backward()
    assert x_t.grad is not None and x_t.grad.abs().sum() > 0 and torch.isfinite(x_t.grad).all()
    assert all(not p.requires_grad and p.grad is None for p in backend.reference.parameters())


def test_trainable_copies_start_at_the_reference(case):
    _, _, backend = case
    x_t, t = noised(backend)
    cond = backend.encode_prompts(["x", "y", "z"])
    torch.testing.assert_close(backend.assistant_x0(x_t, t, cond), backend.reference_x0(x_t, t, cond))
    n_gen = sum(p.numel() for p in backend.generator.parameters())
    assert sum(p.numel() for p in backend.generator_parameters()) == n_gen > 0
    assert all(p.requires_grad for p in backend.assistant_parameters())


def test_generator_is_the_unet_at_t_init(case):
    _, _, backend = case
    seen = []
    handle = backend.generator.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    z = backend.sample_latents(2, torch.Generator().manual_seed(1))
    cond = backend.encode_prompts(["a", "b"])
    x0 = backend.generate(z, cond)
    handle.remove()
    assert len(seen) == 1 and seen[0].tolist() == [399, 399]
    # Initialised from the reference: g(z, c) is the reference's x0-prediction at t_init.
    torch.testing.assert_close(x0, backend.reference_x0(z, torch.full((2,), 399), cond))
    x0.sum().backward()
    assert all(p.grad is not None for p in backend.generator_parameters())
    backend.generator.zero_grad(set_to_none=True)


def test_decode_is_differentiable_and_in_unit_range(case):
    _, _, backend = case
    x0 = backend.sample_latents(2, torch.Generator().manual_seed(2)).requires_grad_(True)
    images = backend.decode(x0)
    assert images.shape == (2, 3, backend.resolution, backend.resolution)
    assert images.min() >= 0 and images.max() <= 1
    images.mean().backward()
    assert x0.grad.abs().sum() > 0
    assert all(p.grad is None for p in backend.pipe.vae.parameters())


