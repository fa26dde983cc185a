"""What ``distar serve --model/--reference`` loads: exports, run folders, diffusers references."""

from __future__ import annotations

import pytest
import torch
import yaml

from distar.backends import ModelConfig, build_backend
from distar.backends.weights import trainable_state_dict
from distar.config import to_dict
from distar.export.pipeline import export_checkpoint
from distar.serve.app import GenerateRequest, generate
from distar.serve.models import load_models
from distar.testing.pipelines import save_tiny_pipeline
from distar.train.checkpoint import save_tensors, write_manifest

PROMPT = "a red house"


def write_run(root, cfg):
    """(run folder with one checkpoint of ``cfg``'s generator, its export, the EMA generator's k-step
    images at seeds 3 and 4, each re-noised from its own seed's generator as the LCM and SANA pipelines do)."""
    backend = build_backend(cfg)
    checkpoint = root / "run" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    save_tensors(trainable_state_dict(backend.generator), checkpoint / "generator.safetensors")
    with torch.no_grad():
        for p in backend.generator_parameters():  # the EMA weights, away from the raw ones
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
        z = torch.cat([backend.sample_latents(1, g) for g in generators])
        expected = backend.decode(backend.sample(z, backend.encode_prompts([PROMPT] * 2), generators))
    save_tensors(trainable_state_dict(backend.generator), checkpoint / "generator_ema.safetensors")
    (checkpoint / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(cfg)}))
    (checkpoint / "trainer_state.json").write_text('{"step": 2}')
    write_manifest(checkpoint)
    return root / "run", export_checkpoint(checkpoint, root / "export"), expected


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(reference folder, run folder with one checkpoint, its export, the EMA generator's images at seeds 3, 4)."""
    root = tmp_path_factory.mktemp("serve-models")
    reference = save_tiny_pipeline(root / "reference", "sd", "epsilon")
    return reference, *write_run(root, ModelConfig(family="sd", pretrained=str(reference), t_init=399))


@pytest.mark.parametrize("kind", ["export", "run"])
def test_served_one_step_model_is_the_trained_generator(tiny_run, kind):
    reference, run, export, expected = tiny_run
    models = load_models(str(export if kind == "export" else run), str(reference), torch.device("cpu"))
    out = generate(models, GenerateRequest(prompt=PROMPT, seed=3, n=2, reference=True, steps=2, guidance=4.0))
    torch.testing.assert_close(out.one_step, expected, rtol=0, atol=1e-4)
    assert out.reference.shape == expected.shape and out.guidance == 4.0
    assert out.one_step_ms > 0 and out.reference_ms > 0
    assert not torch.allclose(out.reference, out.one_step, atol=1e-3)


def test_without_reference_there_is_no_comparison(tiny_run):
    _, _, export, _ = tiny_run
    models = load_models(str(export), None, torch.device("cpu"))
    assert models.reference is None and models.one_step_name == str(export)
    out = generate(models, GenerateRequest(prompt=PROMPT, reference=True))
    assert out.reference is None and out.one_step.shape[0] == 1


@pytest.mark.parametrize("flag", ["--model", "--reference"])
def test_missing_folder_is_a_one_line_error(tmp_path, capsys, flag):
    from distar.cli import main

    missing = str(tmp_path / "no-such-model")
    assert main(["serve", flag, missing]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such folder" in err and missing in err


def test_a_few_step_export_is_served_at_its_recorded_steps(tmp_path):
    """A 4-step SANA export: the transformer runs once per recorded σ, and the images are the
    generator's 4-step samples (each seed's own, whatever the batch)."""
    reference = save_tiny_pipeline(tmp_path / "reference", "sana")
    _, export, expected = write_run(tmp_path, ModelConfig(family="sana", pretrained=str(reference), steps=4))
    models = load_models(str(export), None, torch.device("cpu"))
    timesteps = []
    record = lambda module, args, kwargs: timesteps.append(kwargs["timestep"][0].item())  # noqa: E731
    models.one_step.pipeline.transformer.register_forward_pre_hook(record, with_kwargs=True)
    out = generate(models, GenerateRequest(prompt=PROMPT, seed=3, n=2))
    assert timesteps == [1000.0, 750.0, 500.0, 250.0]
    torch.testing.assert_close(out.one_step, expected, rtol=0, atol=1e-4)
    alone = generate(models, GenerateRequest(prompt=PROMPT, seed=4, n=1))
    torch.testing.assert_close(alone.one_step, expected[1:], rtol=0, atol=1e-4)
