"""Hub-ready exports: card front matter (licence, base_model, tags), the summary sections,
`distar.json` without local paths, the training resolution, validation and the (mocked) upload."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from distar.backends import ModelConfig, build_backend
from distar.export.card import hub_id, portable_name, validate_export
from distar.cli import main
from distar.config import ConfigError
from distar.eval.report import ModelResult, Summary
from distar.export.pipeline import export_checkpoint
from export_helpers import PROMPT, write_checkpoint

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def hub_snapshot(root: Path, repo: str, source: Path, license: str | None) -> Path:
    """``source`` copied to where the hub cache keeps ``repo``, with a card carrying ``license``."""
    owner, name = repo.split("/")
    folder = root / f"models--{owner}--{name}" / "snapshots" / "0123abc"
    shutil.copytree(source, folder)
    if license:
        (folder / "README.md").write_text(f"---\nlicense: {license}\n---\n\n# {name}\n")
    return folder


@pytest.fixture
def snapshot_run(tiny_dir, tmp_path, perturb):
    """A checkpoint of a LoRA generator at 32 px on a tiny SD laid out as the SD 1.5 hub snapshot."""
    base = hub_snapshot(tmp_path / "hub", SD15, tiny_dir("sd"), "creativeml-openrail-m")
    cfg = ModelConfig(pretrained=str(base), resolution=32, generator_lora_rank=2)
    folder, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    return folder, cfg


def test_card_has_licence_base_model_tags_and_the_one_step_call(snapshot_run, tmp_path):
    folder, _ = snapshot_run
    for lora in (False, True):
        out = export_checkpoint(folder, tmp_path / f"export-{lora}", lora=lora)
        card = ModelCard.load(out / "README.md")
        assert card.data.license == "creativeml-openrail-m"
        assert card.data.base_model == [SD15]
        assert card.data.base_model_relation == ("adapter" if lora else "finetune")
        assert {"distar", "one-step", "text-to-image"} <= set(card.data.tags) and ("lora" in card.data.tags) == lora
        assert "timesteps=[399], height=32, width=32" in card.text
        assert ("load_lora_weights" in card.text) == lora
        meta = validate_export(out, require_license=True)
        assert meta["pretrained"] == SD15 and meta["checkpoint"] == "checkpoint-5" and meta["resolution"] == 32
        assert not any(str(tmp_path) in str(v) for v in meta.values())


def test_export_generates_at_the_training_resolution(snapshot_run, tmp_path):
    folder, _ = snapshot_run
    out = export_checkpoint(folder, tmp_path / "export")
    pipe = DiffusionPipeline.from_pretrained(out)
    image = pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, timesteps=[399], output_type="pt").images
    assert image.shape[-2:] == (32, 32)  # the reference's default would be 16 × 16


def test_licence_override_and_conflict(tiny_dir, tmp_path, perturb):
    base = hub_snapshot(tmp_path / "hub", SD15, tiny_dir("sd"), "creativeml-openrail-m")
    init = hub_snapshot(tmp_path / "hub", "someone/one-step-init", tiny_dir("sd"), "cc-by-nc-4.0")
    cfg = ModelConfig(pretrained=str(base), generator_init=str(init))
    folder, _ = write_checkpoint(tmp_path / "run", cfg, build_backend(cfg), perturb)
    with pytest.raises(ConfigError, match="different licences .*cc-by-nc-4.0.*--license"):
        export_checkpoint(folder, tmp_path / "a")
    out = export_checkpoint(folder, tmp_path / "b", license="cc-by-nc-4.0")
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "cc-by-nc-4.0" and card.data.base_model == [SD15, "someone/one-step-init"]


def write_eval(folder: Path, models: dict[str, dict[str, float | None]]) -> Path:
    """A ``distar eval --out`` folder (``summary.json`` and ``summary.md``) with these rows' mean scores."""
    folder.mkdir()
    rows = [ModelResult(name, 4, scores=scores, sampling={"num_inference_steps": 1}) for name, scores in models.items()]
    summary = Summary("parti", "PartiPrompts.tsv", prompts=2, seeds=[0, 1], metrics=["pickscore", "clip"], models=rows)
    summary.write(folder)
    return folder


def test_training_and_evaluation_sections(snapshot_run, tmp_path):
    folder, cfg = snapshot_run
    evaluation = write_eval(tmp_path / "eval", {"g": {"pickscore": 0.2291, "clip": 31.5}})
    out = export_checkpoint(folder, tmp_path / "export", eval_dir=evaluation)
    text = ModelCard.load(out / "README.md").text
    assert "## Training" in text and "LoRA rank 2" in text and "resolution 32" in text
    assert "## Evaluation" in text and "### Table 1" in text and "| g | 1 | 0.2291 | 31.50 |" in text
    assert main(["export", str(folder), "--out", str(tmp_path / "x"), "--eval", str(tmp_path)]) == 2  # no summary.md


def test_card_metadata_validates_with_one_step_inference_widget_and_model_index(snapshot_run, tmp_path):
    folder, _ = snapshot_run
    scores = {"base": {"pickscore": 0.21, "clip": None}, "export": {"pickscore": 0.2291, "clip": 31.5}}
    evaluation = write_eval(tmp_path / "eval", scores)
    out = export_checkpoint(folder, tmp_path / "export", eval_dir=evaluation)
    card = ModelCard.load(out / "README.md", ignore_metadata_errors=False)  # parses model-index strictly
    data = card.data.to_dict()
    assert data["inference"]["parameters"] == {
        "num_inference_steps": 1, "guidance_scale": 0.0, "timesteps": [399], "width": 32, "height": 32
    }
    assert data["widget"][0]["text"] and data["pipeline_tag"] == "text-to-image"
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "export"  # the row named as the export folder, not the baseline
    assert {(r.metric_type, r.metric_value, r.dataset_type, r.task_type) for r in results} == {
        ("pickscore", 0.2291, "parti", "text-to-image"), ("clip", 31.5, "parti", "text-to-image")
    }
    assert metadata_load(out / "README.md") == data  # huggingface_hub's own front-matter reader agrees
    assert ModelCardData(**data).to_dict() == data  # round-trips through the Hub's card data class

    plain = export_checkpoint(folder, tmp_path / "plain")  # without --eval: no model-index
    assert "model-index" not in ModelCard.load(plain / "README.md").data.to_dict()
    other = write_eval(tmp_path / "eval2", {"a": {"pickscore": 0.2}, "b": {"pickscore": 0.3}})
    none = export_checkpoint(folder, tmp_path / "none", eval_dir=other)  # no row is the export's
    assert "model-index" not in ModelCard.load(none / "README.md").data.to_dict()


class FakeApi:
    """Records what would be sent to the hub."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return "https://huggingface.co/me/model/commit/1"


def test_push_to_hub_uploads_the_validated_folder(snapshot_run, tiny_dir, tmp_path, perturb, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    folder, _ = snapshot_run
    out = tmp_path / "export"
    assert main(["export", str(folder), "--out", str(out), "--lora", "--push-to-hub", "me/model", "--private"]) == 0
    assert [c[0] for c in FakeApi.calls] == ["create_repo", "upload_folder"]
    assert FakeApi.calls[0][1]["private"] is True
    assert Path(FakeApi.calls[1][1]["folder_path"]) == out and FakeApi.calls[1][1]["repo_id"] == "me/model"
    assert "commit/1" in capsys.readouterr().out
    assert 'load_lora_weights("me/model")' in (out / "README.md").read_text()

    FakeApi.calls = []  # no licence anywhere (a local tiny model): refused before any upload
    cfg = ModelConfig(pretrained=str(tiny_dir("sd")))
    plain, _ = write_checkpoint(tmp_path / "plain", cfg, build_backend(cfg), perturb)
    assert main(["export", str(plain), "--out", str(tmp_path / "y"), "--push-to-hub", "me/model"]) == 2
    assert "--license" in capsys.readouterr().err and FakeApi.calls == []


def test_model_names_are_published_without_local_paths(tmp_path):
    snapshot = tmp_path / "models--owner--name" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "unet.bin").write_bytes(b"")
    local = tmp_path / "my-model"
    local.mkdir()
    assert hub_id("owner/name") == "owner/name" and hub_id("tianweiy/DMD2/dmd2_sdxl_1step_unet_fp16.bin") == "tianweiy/DMD2"
    assert hub_id(str(snapshot)) == hub_id(str(snapshot / "unet.bin")) == "owner/name"
    assert hub_id(str(local)) is None and hub_id("tiny:sd") is None
    assert portable_name(str(local)) == "my-model" and portable_name("tiny:sdxl") == "tiny:sdxl"
