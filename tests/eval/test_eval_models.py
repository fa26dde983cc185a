"""Model specs and the diffusers adapter on tiny local pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distar.config import ConfigError
from distar.eval.models import DiffusersModel, ModelSpec, parse_model_spec


def test_parse_model_spec():
    spec = parse_model_spec("org/model::name=sdxl base,steps=50,guidance=7.5,timesteps=[999,499],dtype=float16")
    assert (spec.path, spec.name, spec.steps, spec.guidance, spec.timesteps) == ("org/model", "sdxl base", 50, 7.5, [999, 499])
    assert spec.label == "sdxl_base"
    assert parse_model_spec("runs/a/checkpoint-10::timesteps=399,ema=false").timesteps == [399]
    assert parse_model_spec("runs/a/checkpoint-10/").label == "checkpoint-10"
    with pytest.raises(ConfigError, match="unknown key 'model.stepz'"):
        parse_model_spec("x::stepz=4")
    with pytest.raises(ConfigError, match="not of the form"):
        parse_model_spec("x::steps")
    with pytest.raises(ConfigError, match="steps must be"):
        parse_model_spec("x::steps=0")


def test_diffusers_model_is_deterministic_per_seed(tiny_pipelines):
    model = DiffusersModel(ModelSpec(str(tiny_pipelines["base"]), steps=2, guidance=3.0, device="cpu"))
    assert model.sampling_options() == {"num_inference_steps": 2, "guidance_scale": 3.0}
    pair = model.generate_images(["a red cube", "a blue ball"], [0, 1])
    assert pair.shape == (2, 3, 16, 16) and pair.dtype == torch.float32
    assert 0 <= pair.min() and pair.max() <= 1
    alone = model.generate_images(["a blue ball"], [1])
    torch.testing.assert_close(alone[0], pair[1], atol=1e-5, rtol=0)  # independent of the batch
    assert not torch.allclose(model.generate_images(["a blue ball"], [2]), alone)
    model.unload()
    torch.testing.assert_close(model.generate_images(["a blue ball"], [1]), alone, atol=1e-5, rtol=0)


def test_distar_export_defaults_to_one_step_at_t_init(tiny_pipelines):
    model = DiffusersModel(ModelSpec(str(tiny_pipelines["one"]), device="cpu"))
    assert model.t_init == 399
    assert model.sampling_options() == {"num_inference_steps": 1, "guidance_scale": 0.0, "timesteps": [399]}
    assert model.generate_images(["a red cube"], [0]).shape == (1, 3, 16, 16)
    many = DiffusersModel(ModelSpec(str(tiny_pipelines["one"]), steps=4, height=32, width=32))
    assert many.sampling_options() == {"num_inference_steps": 4, "guidance_scale": 0.0, "height": 32, "width": 32}
    assert many.describe()["t_init"] == 399


def test_missing_model_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load a diffusers pipeline"):
        DiffusersModel(ModelSpec(str(tmp_path / "nothing"), device="cpu")).generate_images(["a"], [0])


@pytest.mark.slow
def test_training_checkpoint_is_evaluated_through_export(tmp_path):
    from distar.cli import main
    from distar.export.pipeline import generator_images, load_generator

    configs = Path(__file__).resolve().parents[2] / "configs"
    quick = ["loop.max_steps=1", "checkpointing.every=1", "logging.progress_bar=false", "sampling.every=0", "logging.report_to=none"]
    assert main(["train", "--config", str(configs / "tiny_sd.yaml"), f"output_dir={tmp_path}", *quick]) == 0
    model = DiffusersModel(ModelSpec(str(tmp_path), device="cpu"))  # a run folder: its latest checkpoint
    assert model.t_init == 399 and model.sampling_options()["timesteps"] == [399]
    images = model.generate_images(["a cat", "a dog"], [0, 1])
    pipe, call = load_generator(tmp_path / "checkpoint-1")
    torch.testing.assert_close(images, generator_images(pipe, ["a cat", "a dog"], [0, 1], call=call), atol=1e-6, rtol=0)


def test_swapped_unet_and_scheduler(tiny_pipelines):
    """A DMD2-style baseline: a base pipeline with another UNet and a one-step scheduler."""
    options = dict(steps=1, guidance=0.0, timesteps=[399], scheduler="LCMScheduler", device="cpu")
    swapped = DiffusersModel(ModelSpec(str(tiny_pipelines["base"]), unet=str(tiny_pipelines["one"]), **options))
    plain = DiffusersModel(ModelSpec(str(tiny_pipelines["base"]), **options))
    one = DiffusersModel(ModelSpec(str(tiny_pipelines["one"]), device="cpu"))
    assert type(swapped.pipeline.scheduler).__name__ == "LCMScheduler"
    reference = one.pipeline.unet.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in swapped.pipeline.unet.state_dict().items())
    assert not torch.allclose(swapped.generate_images(["a cat"], [0]), plain.generate_images(["a cat"], [0]))
    assert swapped.describe()["unet"] == str(tiny_pipelines["one"])
    with pytest.raises(ConfigError, match="unknown diffusers scheduler"):
        DiffusersModel(ModelSpec(str(tiny_pipelines["base"]), scheduler="NoSuchScheduler")).generate_images(["a"], [0])
