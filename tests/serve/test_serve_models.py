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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(reference folder, run folder with one checkpoint, its export, the EMA generator's images at seeds 3, 4)."""
    root = tmp_path_factory.mktemp("serve-models")
    reference = save_tiny_pipeline(root / "reference", "sd", "epsilon")
    cfg = ModelConfig(family="sd", pretrained=str(reference), t_init=399)
    backend = build_backend(cfg)
    checkpoint = root / "run" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    save_tensors(trainable_state_dict(backend.generator), checkpoint / "generator.safetensors")
    with torch.no_grad():
        for p in backend.generator_parameters():  # the EMA weights, away from the raw ones
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        z = torch.cat([backend.sample_latents(1, torch.Generator().manual_seed(s)) for s in (3, 4)])
        expected = backend.decode(backend.generate(z, backend.encode_prompts([PROMPT] * 2)))
    save_tensors(trainable_state_dict(backend.generator), checkpoint / "generator_ema.safetensors")
    (checkpoint / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(cfg)}))
    (checkpoint / "trainer_state.json").write_text('{"step": 2}')
    write_manifest(checkpoint)
    return reference, root / "run", export_checkpoint(checkpoint, root / "export"), expected


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
