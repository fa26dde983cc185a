"""distar.inference: one loader and one interface for everything that makes images."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distar.backends import ModelConfig, build_backend
from distar.export.pipeline import generator_images, load_generator
from distar.inference.models import DiffusersModel
from distar.inference.spec import ModelSpec
from distar.protocols import BackendModel, ImageModel
from distar.serve.models import one_step_model

PROMPTS = ["a red cube", "a blue ball", "a green cone"]


@pytest.fixture(scope="module")
def backends(tiny_pipelines):
    """(one-step, two-step) live SD backends on the tiny base pipeline."""
    cfg = ModelConfig(family="sd", pretrained=str(tiny_pipelines["base"]), t_init=399)
    return build_backend(cfg), build_backend(dataclasses.replace(cfg, t_init=999, steps=2, timesteps=[999, 499]))


def test_a_one_step_backend_model_is_its_generator_image_by_image_and_leaves_the_global_rng(backends):
    one, _ = backends
    model = BackendModel(one, "one", batch_size=2)
    assert isinstance(model, ImageModel)
    state = torch.get_rng_state()
    images = model.generate_images(PROMPTS, [5, 6, 7])
    assert torch.equal(torch.get_rng_state(), state)
    assert images.shape == (3, 3, 16, 16) and images.device.type == "cpu"
    with torch.no_grad():
        z = one.sample_latents(1, torch.Generator().manual_seed(6))
        alone = one.decode(one.generate(z, one.encode_prompts(PROMPTS[1:2]))).float()
    torch.testing.assert_close(images[1:2], alone, atol=1e-5, rtol=0)


def test_a_few_step_backend_model_re_noises_from_its_own_seed(backends):
    _, two = backends
    first = BackendModel(two, "two", renoise_seed=3).generate_images(PROMPTS[:2], [1, 2])
    assert torch.equal(BackendModel(two, "two", renoise_seed=3).generate_images(PROMPTS[:2], [1, 2]), first)
    assert not torch.equal(BackendModel(two, "two", renoise_seed=4).generate_images(PROMPTS[:2], [1, 2]), first)


def test_a_generator_is_known_by_its_metadata_and_sampled_as_distar_generate_samples_it(tiny_pipelines):
    one = DiffusersModel(ModelSpec(str(tiny_pipelines["one"]), device="cpu"))
    base = DiffusersModel(ModelSpec(str(tiny_pipelines["base"]), steps=2, device="cpu"))
    assert one.few_step and not base.few_step
    pipe, call = load_generator(tiny_pipelines["one"])
    expected = generator_images(pipe, PROMPTS[:2], [3, 4], call=call)
    assert torch.equal(one.generate_images(PROMPTS[:2], [3, 4]), expected.float().clamp(0, 1))


def test_serve_samples_a_plain_pipeline_at_one_step_without_cfg_and_a_generator_at_its_own(tiny_pipelines):
    plain = one_step_model(str(tiny_pipelines["base"]), torch.device("cpu"))
    assert not plain.few_step and plain.sampling_options() == {"num_inference_steps": 1, "guidance_scale": 0.0}
    generator = one_step_model(str(tiny_pipelines["one"]), torch.device("cpu"))
    assert generator.sampling_options() == {"num_inference_steps": 1, "guidance_scale": 0.0, "timesteps": [399]}
