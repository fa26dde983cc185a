"""SANA backend on tiny models: the reference's x0 and CFG pair are the SanaPipeline's own one-step call
(its Gemma conditioning with the complex human instruction and mask, its timestep convention, its
guidance_scale); the flow schedule comes from SANA's DPM-Solver config; config errors. Exports (1 and 4
steps), LoRA layouts and checkpointing: the family-parametrised tests of test_backends_few_step.py and
test_backends_lora*.py."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline

from distar.backends import ModelConfig, build_backend
from distar.backends.loading import one_step_flow_scheduler
from distar.config import ConfigError
from distar.diffusion import FlowMatchSchedule
from distar.protocols import Backend
from distar.testing.pipelines import TINY_SANA_SHIFT
from export_helpers import PROMPT

SIGMAS = [0.05, 0.5, 0.97]


@pytest.fixture(scope="module")
def case(tiny_dir):
    folder = tiny_dir("sana")
    return folder, build_backend(ModelConfig(family="sana", pretrained=str(folder)))


@pytest.fixture(scope="module")
def pipe(case):
    """The reference folder as plain diffusers loads it, with an unshifted Euler scheduler: its one step
    from σ to 0 is x_t − σ v̂, the x0 the pipeline's transformer call implies."""
    pipe = DiffusionPipeline.from_pretrained(case[0])
    pipe.scheduler = one_step_flow_scheduler(pipe.scheduler.config)
    return pipe


def pipeline_x0(pipe, x_t, sigma, guidance_scale=0.0):
    return pipe(
        PROMPT,
        latents=x_t,
        sigmas=[sigma],
        guidance_scale=guidance_scale,
        height=32,
        width=32,
        use_resolution_binning=False,
        output_type="latent",
    ).images


def test_is_a_backend_on_the_flow_schedule_of_sanas_dpm_solver(case):
    _, backend = case
    assert isinstance(backend, Backend) and isinstance(backend.schedule, FlowMatchSchedule)
    assert type(backend.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"  # flow_shift, not shift
    assert backend.schedule.shift == TINY_SANA_SHIFT and backend.t_init == 1000 and backend.generator_times == [1.0]
    assert backend.latent_shape == (4, 8, 8) and backend.resolution == 32 and backend.max_sequence_length == 300


def test_conditioning_is_what_the_pipeline_feeds_its_transformer(case, pipe):
    """[∅, prompt] with their masks, the prompt behind the pipeline's complex human instruction, and
    the timestep 1000·σ."""
    _, backend = case
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, kwargs: seen.append(kwargs), with_kwargs=True)
    pipeline_x0(pipe, backend.sample_latents(1, torch.Generator().manual_seed(0)), 0.5, guidance_scale=2.0)
    hook.remove()
    (fed,) = seen
    expected = backend.uncond.cat(backend.encode_prompts([PROMPT]))
    torch.testing.assert_close(fed["encoder_hidden_states"], expected.embeds)
    assert torch.equal(fed["encoder_attention_mask"], expected.mask) and expected.embeds.shape[1] == 300
    assert fed["timestep"].tolist() == [500.0, 500.0]
    plain, _, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)  # no instruction
    assert not torch.allclose(plain, expected.embeds[1:])


def test_reference_and_cfg_pair_are_the_pipelines_one_step_and_reach_x_t(case, pipe):
    _, backend = case
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor(SIGMAS)
    x_t = backend.schedule.add_noise(torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen), t)
    x_t.requires_grad_(True)
    cond = backend.encode_prompts([PROMPT] * 3)
    x0 = backend.reference_x0(x_t, t, cond)
    x0_c, x0_u = backend.reference_x0_cond_uncond(x_t, t, cond)
    torch.testing.assert_close(x0_c, x0, rtol=1e-5, atol=1e-5)
    guided = x0_u + 4.5 * (x0_c - x0_u)  # two-pass CFG (3.5) with ω = the pipeline's guidance_scale
    for i, sigma in enumerate(SIGMAS):
        x = x_t[i : i + 1].detach()
        torch.testing.assert_close(x0[i : i + 1], pipeline_x0(pipe, x, sigma), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(guided[i : i + 1], pipeline_x0(pipe, x, sigma, 4.5), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(x0_c, x0_u)
    (x0_c.square().sum() + x0_u.sum()).backward()
    assert x_t.grad.abs().sum() > 0 and torch.isfinite(x_t.grad).all()
    assert all(p.grad is None for p in backend.reference.parameters())


def test_sana_config_errors(tiny_dir):
    folder = str(tiny_dir("sana"))
    with pytest.raises(ConfigError, match="multiples of 32"):
        build_backend(ModelConfig(family="sana", pretrained=folder, resolution=48))
    with pytest.raises(ConfigError, match="transformer/"):
        build_backend(ModelConfig(family="sana", pretrained=str(tiny_dir("sd"))))
    with pytest.raises(ConfigError, match="does not match"):
        ModelConfig(family="sd3", pretrained="tiny:sana")
