"""Few-step generators (model.steps / model.timesteps): config, k-step sampling, DMD2's backward
simulation in training, and 4-step (SANA: also 1-step) exports that plain diffusers and `distar generate`
reproduce."""

from __future__ import annotations

import json

import pytest
import torch

from distar.backends import ModelConfig, build_backend
from distar.cli import main
from distar.config import ConfigError
from distar.export.pipeline import METADATA_FILE, export_checkpoint
from distar.train.algorithm import BatchPart, generator_x0
from export_helpers import PROMPT, backend_image, diffusers_image, read_png, write_checkpoint


def test_steps_and_timesteps_config():
    assert ModelConfig(steps=4).generator_timesteps == [999, 749, 499, 249]
    assert ModelConfig(family="sd3", pretrained="tiny:sd3", steps=2).generator_timesteps == [1000, 500]
    assert ModelConfig().generator_timesteps == [399] and ModelConfig(t_init=250).generator_timesteps == [250]
    custom = ModelConfig(steps=2, timesteps=[800, 300])
    assert custom.t_init == 800 and custom.generator_timesteps == [800, 300]
    for bad, match in [
        (dict(steps=2, timesteps=[999]), "2 given|1 given"),
        (dict(steps=2, timesteps=[300, 800]), "decreasing"),
        (dict(steps=2, timesteps=[999, 500], t_init=399), "first of model.timesteps"),
        (dict(steps=0), "model.steps"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ModelConfig(**bad)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "sana"])
def test_backward_simulation_runs_the_generators_earlier_steps(family, make_backend, perturb):
    backend = make_backend(family, steps=4)
    perturb(list(backend.generator_parameters()), seed=1)
    seen = []
    handle = backend.generator.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[1] if args[1:] else kwargs["timestep"]).clone()), with_kwargs=True
    )
    z = backend.sample_latents(2, torch.Generator().manual_seed(0))
    cond = backend.encode_prompts(["a", "b"])
    counts = set()
    for seed in range(6):
        seen.clear()
        torch.manual_seed(seed)
        x0 = generator_x0(backend, z, cond)
        calls = [round(float(t[0])) for t in seen]  # UNet timesteps, or the transformer's 1000·σ
        # the same draws by hand: the step, then one re-noising per earlier step (a generator per sample)
        torch.manual_seed(seed)
        last = int(torch.randint(4, ()))
        x = z
        with torch.no_grad():
            for step in range(last):
                x = backend.renoise(backend.generate(x, cond, step), step + 1, BatchPart().generators(2))
        torch.testing.assert_close(x0, backend.generate(x, cond, last))
        assert calls == backend.timesteps[: last + 1] and x0.requires_grad
        counts.add(last)
    assert len(counts) > 1  # the step is drawn, not fixed
    handle.remove()


@pytest.mark.parametrize(("family", "steps"), [("sd", 4), ("sdxl", 4), ("sd3", 4), ("sana", 1), ("sana", 4)])
def test_few_step_export_reproduces_the_generator(family, steps, tiny_dir, tmp_path, perturb):
    cfg = ModelConfig(family=family, pretrained=str(tiny_dir(family)), steps=steps)
    backend = build_backend(cfg)
    folder, _ = write_checkpoint(tmp_path / "run", cfg, backend, perturb)
    expected = backend_image(backend, seed=7)
    z = backend.sample_latents(1, torch.Generator().manual_seed(7))
    with torch.no_grad():
        first = backend.decode(backend.generate(z, backend.encode_prompts([PROMPT])))
    assert torch.allclose(expected, first, atol=1e-3) == (steps == 1)  # k steps are not the first step

    out = export_checkpoint(folder, tmp_path / "export")
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["num_inference_steps"] == steps and metadata["timesteps"] == cfg.generator_timesteps
    assert f"num_inference_steps={steps}" in (out / "README.md").read_text()
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == type(backend.pipe).__name__
    torch.testing.assert_close(diffusers_image(out, seed=7), expected, rtol=0, atol=2e-5)
    for model in (out, tmp_path / "run"):
        png = tmp_path / f"{model.name}.png"
        assert main(["generate", "--model", str(model), "--prompt", PROMPT, "--seed", "7", "--out", str(png)]) == 0
        assert (read_png(png) - expected[0]).abs().max() <= 1 / 255 + 1e-6
