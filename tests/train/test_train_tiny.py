"""End to end on the tiny SD / SDXL / SD3 / FLUX / SANA configs: every preset through `distar train`, checkpoints,
resume `latest`, frozen parts untouched, LoRA layouts, mixed precision, export and `distar generate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from distar.cli import main
from distar.config import load_config
from distar.objectives import PRESETS
from distar.train.config import TrainConfig
from distar.train.tracking import TIMING_KEYS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUICK = ["logging.progress_bar=false", "logging.every=1", "sampling.every=0", "logging.report_to=none"]


def train(family: str, out: Path, *overrides: str, resume: str | None = None) -> int:
    """`distar train` on tiny_<family>.yaml; ``resume`` goes before the overrides, as in the docs."""
    argv = ["train", "--config", str(CONFIGS / f"tiny_{family}.yaml"), *(["--resume", resume] if resume else [])]
    return main(argv + [f"output_dir={out}", *QUICK, *overrides])


def log(out: Path) -> list[dict]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "sana"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_and_checkpoints(family, preset, tmp_path):
    overrides = [f"objective.preset={preset}", "loop.max_steps=2", "loop.assistant_steps=1", "checkpointing.every=1"]
    assert train(family, tmp_path, *overrides) == 0
    records = log(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert all(torch.isfinite(torch.tensor(v)) for r in records for v in r.values())
    if PRESETS[preset]["reward_scale"]:
        assert "generator/reward" in records[0]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # total_limit 2
    checkpoint = tmp_path / "checkpoint-2"
    assert load_config(TrainConfig, checkpoint / "config.yaml").objective.preset == preset
    assert load_file(checkpoint / "generator.safetensors") and load_file(checkpoint / "generator_ema.safetensors")


def test_cli_resume_latest_is_exact_and_samples_are_written(tmp_path):
    common = ["loop.max_steps=3", "checkpointing.every=2", "sampling.every=3"]
    assert train("sd", tmp_path / "straight", *common) == 0
    assert train("sd", tmp_path / "split", *common, "loop.max_steps=2") == 0
    assert train("sd", tmp_path / "split", *common, resume="latest") == 0
    assert log(tmp_path / "split") == log(tmp_path / "straight")
    assert [r["step"] for r in log(tmp_path / "split")] == [1, 2, 3]
    a, b = (load_file(tmp_path / run / "checkpoint-3" / "generator.safetensors") for run in ("straight", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "split" / "samples" / "step-000003-ema.png").is_file()


def export_reproduces_generate(run: Path, tmp_path: Path) -> dict:
    """`distar export` of the run, loaded by plain diffusers and called as its `distar.json` records,
    gives the image `distar generate` writes (SD3 and FLUX re-noise from the global RNG: seeded as
    generate seeds it); returns that metadata."""
    from diffusers import DiffusionPipeline

    from distar.export.pipeline import generator_call

    export, png = tmp_path / "export", tmp_path / "image.png"
    assert main(["export", str(run), "--out", str(export)]) == 0
    assert main(["generate", "--model", str(export), "--prompt", "a cat", "--seed", "3", "--out", str(png)]) == 0
    metadata = json.loads((export / "distar.json").read_text())
    pipe = DiffusionPipeline.from_pretrained(export)
    torch.manual_seed(3)
    call = generator_call(metadata)
    image = pipe("a cat", generator=torch.Generator().manual_seed(3), output_type="np", **call).images[0]
    written = torch.tensor(list(Image.open(png).getdata())).float().view(image.shape) / 255
    assert (written - torch.from_numpy(image)).abs().max() <= 1 / 255 + 1e-6
    return metadata


@pytest.mark.parametrize("family", ["sd3", "sana"])
def test_flow_model_resumes_exactly_and_its_export_reproduces_generate(family, tmp_path):
    """tiny_<family>: 3 steps straight = 2 + resume; the export, loaded by plain diffusers with the
    one-step call it records, gives the image `distar generate` writes."""
    common = ["loop.max_steps=3", "checkpointing.every=2", "loop.assistant_steps=1"]
    assert train(family, tmp_path / "straight", *common) == 0
    assert train(family, tmp_path / "split", *common, "loop.max_steps=2") == 0
    assert train(family, tmp_path / "split", *common, resume="latest") == 0
    assert log(tmp_path / "split") == log(tmp_path / "straight")
    a, b = (load_file(tmp_path / run / "checkpoint-3" / "generator.safetensors") for run in ("straight", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert export_reproduces_generate(tmp_path / "split", tmp_path)["num_inference_steps"] == 1


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux", "sana"])
def test_four_step_generator_trains_and_its_export_reproduces_generate(family, tmp_path):
    """model.steps=4: training (backward simulation) and 4-step sample grids run; the 4-step export,
    loaded by plain diffusers at its recorded timesteps, gives the image `distar generate` writes."""
    run = tmp_path / "run"
    overrides = ["model.steps=4", "loop.max_steps=2", "loop.assistant_steps=1", "sampling.every=2"]
    assert train(family, run, *overrides) == 0
    assert (run / "samples" / "step-000002.png").is_file()
    assert export_reproduces_generate(run, tmp_path)["num_inference_steps"] == 4


def build(tmp_path, *overrides):
    from distar.train.build import build_trainer

    base = [f"output_dir={tmp_path}", *QUICK, "loop.max_steps=2", "loop.assistant_steps=1", "ema.decay=0"]
    return build_trainer(load_config(TrainConfig, CONFIGS / "tiny_sd.yaml", [*base, *overrides]))


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_full_fine_tuning_moves_trainable_weights_only(tmp_path):
    trainer = build(tmp_path)
    backend = trainer.backend
    frozen = {"reference": backend.reference, "vae": backend.pipe.vae, "text": backend.pipe.text_encoder}
    before = {name: snapshot(m) for name, m in frozen.items()}
    generator, assistant = snapshot(backend.generator), snapshot(backend.assistant)
    trainer.train()
    for name, module in frozen.items():
        assert not changed(before[name], module), name
    assert changed(generator, backend.generator) and changed(assistant, backend.assistant)
    saved = load_file(tmp_path / "checkpoint-2" / "generator.safetensors")
    assert set(saved) == set(backend.generator.state_dict())  # fully fine-tuned: the whole UNet


def test_shared_lora_assistant_leaves_the_reference_weights_alone(tmp_path):
    lora = ["model.assistant_lora_rank=2", "model.generator_lora_rank=2", "model.gradient_checkpointing=true"]
    trainer = build(tmp_path, *lora)
    backend = trainer.backend
    unet = backend.assistant  # adapter on the reference's own UNet
    before = snapshot(unet)
    trainer.train()
    moved = changed(before, unet)
    assert moved and all("lora" in k for k in moved)
    generator_keys = set(load_file(tmp_path / "checkpoint-2" / "generator.safetensors"))
    assistant_keys = set(load_file(tmp_path / "checkpoint-2" / "assistant.safetensors"))
    assert generator_keys and all("lora" in k for k in generator_keys | assistant_keys)


def test_bf16_autocast_runs(tmp_path):
    records = build(tmp_path, "loop.mixed_precision=bf16").train()
    assert torch.isfinite(torch.tensor(records[-1]["generator/loss"]))


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["train", "--config", str(CONFIGS / "tiny_sdxl.yaml"), "--dry-run", "loop.max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 7" in out and "pretrained: tiny:sdxl" in out and "reward_scale: 100.0" in out


def test_bad_key_is_a_one_line_error(capsys):
    assert main(["train", "--config", str(CONFIGS / "tiny_sd.yaml"), "optim.generator.weight_decy=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "distar train: error: unknown key 'optim.generator.weight_decy' (did you mean 'weight_decay'?)"


def test_bad_resume_path_fails_before_loading(tmp_path, capsys):
    assert main(["train", "--config", str(CONFIGS / "tiny_sd.yaml"), "--resume", str(tmp_path / "nope")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_model_compile_compiles_every_unet_in_place(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    trainer = build(tmp_path, "model.compile=true")
    backend = trainer.backend
    assert {id(m) for m in compiled} == {id(backend.generator), id(backend.assistant), id(backend.reference)}
    assert trainer.config.model is not None and not type(trainer.config.model)().compile  # off by default


@pytest.mark.slow
def test_compiled_unets_train_like_eager_ones(tmp_path):
    """model.compile on CPU (inductor; minutes on a loaded 2-core machine): same losses and checkpoint names."""
    eager = build(tmp_path / "eager").train()
    trainer = build(tmp_path / "compiled", "model.compile=true")
    assert trainer.backend.generator._compiled_call_impl is not None
    compiled = trainer.train()
    for a, b in zip(eager, compiled):
        assert a["generator/loss"] == pytest.approx(b["generator/loss"], rel=1e-3, abs=1e-4)
    names = lambda run: set(load_file(tmp_path / run / "checkpoint-2" / "generator.safetensors"))  # noqa: E731
    assert names("compiled") == names("eager")
