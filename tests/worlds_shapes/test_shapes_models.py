"""The world's models: tokenizer, build command, and the shipped models loaded by distar's own loaders."""

from __future__ import annotations

import hashlib
import math
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, CLIPTextModel

from distar.backends import build_backend
from distar.backends.config import ModelConfig
from distar.rewards import RewardSpec, load_reward
from distar.worlds.shapes.assets import build_record, load_clip
from distar.worlds.shapes.clip import MAX_LENGTH, ClipArch, image_embeddings, new_clip, pairwise_accuracy, preference_pairs, text_embeddings
from distar.worlds.shapes.data import render_prompts
from distar.worlds.shapes.grammar import ATTRIBUTE_VALUES, sample_prompts, vocabulary
from distar.worlds.shapes.metrics import AttributeClassifier, classifier_accuracy
from distar.worlds.shapes.reader import text_encoder_from_clip
from distar.worlds.shapes.reference import ReferenceLoop, UNetArch, new_unet, train_reference
from distar.worlds.shapes.tokenizer import learn_merges, save_word_tokenizer
from distar.worlds.shapes.utility import UtilityWeights
from shapes_helpers import TINY_BUILD


def test_every_grammar_word_is_one_token(tmp_path):
    tokenizer = save_word_tokenizer(tmp_path, vocabulary(), model_max_length=20)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for word in vocabulary():
        ids = loaded(word, add_special_tokens=False).input_ids
        assert len(ids) == 1 and loaded.convert_ids_to_tokens(ids) == [word + "</w>"], word
    # other text still tokenizes, character by character
    assert tokenizer.convert_ids_to_tokens(tokenizer("a hexagon", add_special_tokens=False).input_ids)[:2] == ["a</w>", "h"]
    assert learn_merges(["ab", "abc"]) == learn_merges(["abc", "ab"])


def test_tiny_build_writes_loadable_models(tiny_world):
    record = json.loads((tiny_world / "build_record.json").read_text())
    stages = {"clip", "judge", "reward", "reference", "one_step", "one_step_refine", "quality", "total"}
    assert set(record["timings_seconds"]) >= stages
    assert record["config"]["reference"]["steps"] == 2 and record["environment"]["torch"] == torch.__version__
    for key in ("reference", "one_step_warm_start", "one_step", "renders"):
        assert {"fid", "alignment", "alignment_per_attribute", "true_utility", "learned_reward"} <= set(record["figures"][key])
    assert len(record["figures"]["one_step_refine_log"]) == 2
    for name, entry in record["files"].items():
        assert hashlib.sha256((tiny_world / name).read_bytes()).hexdigest() == entry["sha256"], name
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_world / "reference" / sub).is_dir()
    for sub in ("clip", "judge", "reward", "one_step"):
        assert (tiny_world / sub).is_dir()
    assert not (tiny_world / "reference" / "vae").exists()
    assert not tiny_world.with_name("models.building").exists()
    assert not (tiny_world / "one_step.warm").exists() and not (tiny_world / ".stages").exists()


def test_interrupted_build_resumes_from_its_finished_stages(tmp_path, monkeypatch, capsys):
    from distar.cli import main
    from distar.worlds.shapes import build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def refine_interrupted(*args, **kwargs):
        # stopped after the trainer made its run folder, which then holds a run without a checkpoint
        run = Path(args[4])
        run.mkdir(parents=True)
        (run / "log.jsonl").write_text("")
        raise KeyboardInterrupt

    out = tmp_path / "models"
    # stopped after the reference: the resumed one-step stage trains on the loaded text encoder and UNet
    monkeypatch.setattr(build, "distill_one_step", interrupted)
    try:
        main(["world", "build", "--out", str(out), "shapes", *TINY_BUILD])
    except KeyboardInterrupt:
        pass
    assert (tmp_path / "models.building" / "reference" / "unet").is_dir() and not out.exists()
    unet = (tmp_path / "models.building" / "reference" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["world", "build", "--resume", "--out", str(out), "shapes", *TINY_BUILD]) == 0
    printed = capsys.readouterr().out
    for stage in ("clip", "judge", "reward", "reader", "reference"):
        assert f"[{stage}] kept from the interrupted build" in printed, stage
    assert "[one_step] start" in printed and "[one_step_refine] start" in printed
    assert (out / "reference" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == unet
    # a changed setting retrains that stage and every later one
    capsys.readouterr()
    monkeypatch.setattr(build, "refine_one_step", refine_interrupted)
    try:
        main(["world", "build", "--out", str(out), "shapes", *TINY_BUILD, "reference.lr=0.002"])
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["world", "build", "--resume", "--out", str(out), "shapes", *TINY_BUILD, "reference.lr=0.003"]) == 0
    printed = capsys.readouterr().out
    assert "[reward] kept" in printed and "[reference] start" in printed and "[one_step] start" in printed


def test_world_build_dry_run_prints_the_settings(capsys):
    from distar.cli import main

    assert main(["world", "build", "--dry-run", "shapes", "reference.steps=7"]) == 0
    text = capsys.readouterr().out
    assert "reference:\n  steps: 7" in text and "one_step:" in text
    assert main(["world", "build", "--dry-run", "shapes", "reference.stepz=7"]) == 2


TRAINING_SECTIONS = ("clip", "judge", "reward", "reader", "reference", "one_step", "one_step_refine")


def test_the_build_defaults_are_the_shipped_models_settings(shipped):
    from distar.config import to_dict
    from distar.worlds.shapes.build import BuildConfig

    settings = build_record(shipped)["config"]
    defaults = to_dict(BuildConfig())
    assert {k: v for k, v in defaults.items() if k != "threads"} == {k: v for k, v in settings.items() if k != "threads"}


@pytest.mark.parametrize("section", TRAINING_SECTIONS)
def test_a_build_override_changes_only_its_key(section):
    """A section keeps the build's defaults (not its class's) for the keys an override does not name."""
    from distar.config import load_config, to_dict
    from distar.worlds.shapes.build import BuildConfig

    defaults = to_dict(BuildConfig())
    steps = defaults[section]["steps"] + 1
    changed = to_dict(load_config(BuildConfig, None, [f"{section}.steps={steps}"]))
    assert changed == {**defaults, section: {**defaults[section], "steps": steps}}


def test_shipped_record_and_size(shipped):
    record = build_record(shipped)
    total = sum(entry["bytes"] for entry in record["files"].values())
    assert total < 30 * 2**20
    for name, entry in record["files"].items():
        assert (shipped / name).stat().st_size == entry["bytes"], name
    assert record["figures"]["reward_held_out_pairs"]["pairs"] > 0


def test_shipped_reward_loads_as_pickscore(shipped):
    reward = load_reward(RewardSpec("pickscore", path=str(shipped / "reward")))
    assert reward.transform.size == 32
    prompts = sample_prompts(4, seed=0)
    images = render_prompts(prompts, range(4))[0].requires_grad_(True)
    scores = reward.score(images, prompts)
    assert scores.shape == (4,) and bool(((scores > -1) & (scores < 1)).all())
    scores.sum().backward()
    assert images.grad.abs().sum() > 0


def test_shipped_reward_model_predicts_held_out_choices(shipped):
    model, tokenizer = load_clip("reward", shipped)
    pairs = preference_pairs(300, seed=12345, weights=UtilityWeights())
    accuracy = pairwise_accuracy(model, tokenizer, pairs)
    assert accuracy["accuracy_vs_true_utility"] > 0.7
    assert accuracy["accuracy_vs_choices"] <= accuracy["true_utility_vs_choices"] + 0.05


def test_shipped_classifier_reads_attributes_of_renders(shipped):
    classifier = AttributeClassifier.load(shipped / "judge")
    accuracy = classifier_accuracy(classifier, 300, seed=321)
    assert set(accuracy) == set(ATTRIBUTE_VALUES)
    for attribute, value in accuracy.items():
        assert value > 0.9, attribute


def test_shipped_clip_matches_renders_to_their_prompts(shipped):
    model, tokenizer = load_clip("clip", shipped)
    prompts = ["a red circle on a white background", "a blue square on a black background", "two yellow circles on a navy background"]
    images = render_prompts(prompts, [0, 1, 2])[0]
    with torch.no_grad():
        similarity = image_embeddings(model, images) @ text_embeddings(model, tokenizer, prompts).T
    assert similarity.argmax(1).tolist() == [0, 1, 2]


def test_shipped_reference_and_start_follow_their_prompts(shipped):
    """Sampled here, read back by the classifier: the reference (20 steps, CFG) and the one-step start.

    The floors sit below what these 40 prompts give (mean over attributes 0.93 and 0.83; shape 0.70
    for the reference) and far above the previous designs' blob-drawing models (0.47-0.65, shape at
    chance 0.25).
    """
    from distar.worlds.shapes.metrics import attribute_alignment
    from distar.protocols import BackendModel
    from distar.inference.pixel import ReferenceSampler

    prompts = sample_prompts(40, seed=777)
    classifier = AttributeClassifier.load(shipped / "judge")
    reference = ReferenceSampler.from_pretrained(shipped / "reference", steps=20, guidance_scale=3.0)
    backend = build_backend(
        ModelConfig(family="sd", pretrained=str(shipped / "reference"), generator_init=str(shipped / "one_step"), t_init=999),
        device="cpu",
    )
    for model, floor, shape_floor in ((reference, 0.85, 0.5), (BackendModel(backend, "start"), 0.7, 0.3)):
        images = model.generate_images(prompts, range(len(prompts)))
        per_attribute = attribute_alignment(classifier, images, prompts)
        assert sum(per_attribute.values()) / len(per_attribute) > floor, (model.name, per_attribute)
        assert per_attribute["shape"] > shape_floor, (model.name, per_attribute)


def test_shipped_reference_loads_in_the_sd_backend(shipped):
    backend = build_backend(
        ModelConfig(family="sd", pretrained=str(shipped / "reference"), generator_init=str(shipped / "one_step")),
        device="cpu",
    )
    assert backend.pipe.vae is None and backend.latent_shape == (3, 32, 32)
    cond = backend.encode_prompts(["a red circle", "two blue squares"])
    z = backend.sample_latents(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = backend.decode(backend.generate(z, cond))
    assert images.shape == (2, 3, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1
    x_t = backend.schedule.add_noise(images * 2 - 1, torch.randn_like(z), torch.tensor([500, 500]))
    assert backend.reference_x0(x_t, torch.tensor([500, 500]), cond).shape == x_t.shape


def test_reference_training_updates_the_unet_and_keeps_the_text_encoder(tmp_path):
    tokenizer = save_word_tokenizer(tmp_path, vocabulary(), MAX_LENGTH)
    clip = new_clip(len(tokenizer), ClipArch(width=16, layers=1, heads=2, projection_dim=16), seed=0)
    text_encoder = text_encoder_from_clip(clip)
    unet = new_unet(UNetArch(block_out_channels=(16, 16, 16, 16), norm_num_groups=8), 16, seed=0)
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}
    loop = ReferenceLoop(steps=2, batch_size=2, checkpoint_every=0, lr=1e-2)
    train_reference(unet, text_encoder, tokenizer, loop, lambda step, terms: None)
    assert all(torch.equal(v, clip.text_model.state_dict()[k]) for k, v in text_encoder.state_dict().items())
    assert any(not torch.equal(v, unet_before[k]) for k, v in unet.state_dict().items())
    assert not unet.training and not any(p.requires_grad for p in unet.parameters())


def test_reference_training_stopped_and_resumed_ends_where_an_uninterrupted_run_ends(tmp_path):
    from distar.worlds.shapes.reference import ReferenceCheckpoint

    tokenizer = save_word_tokenizer(tmp_path, vocabulary(), MAX_LENGTH)
    text_encoder = text_encoder_from_clip(new_clip(len(tokenizer), ClipArch(width=16, layers=1, heads=2, projection_dim=16), seed=0))
    arch = UNetArch(block_out_channels=(16, 16, 16, 16), norm_num_groups=8)
    loop = ReferenceLoop(steps=5, batch_size=2, lr=1e-2)
    straight = new_unet(arch, 16, seed=0)
    train_reference(straight, text_encoder, tokenizer, loop, lambda step, terms: None)

    class Stop(Exception):
        pass

    def stop_at_step_3(step: int, terms: dict) -> None:
        if step == 3:
            raise Stop

    checkpoint = ReferenceCheckpoint(tmp_path / "partial", every=2, key={"run": 1})
    with pytest.raises(Stop):
        train_reference(new_unet(arch, 16, seed=0), text_encoder, tokenizer, loop, stop_at_step_3, checkpoint)
    assert checkpoint.load()["fit"]["step"] == 4 and (tmp_path / "partial" / "unet").is_dir()  # saved before the log
    assert ReferenceCheckpoint(tmp_path / "partial", every=2, key={"run": 2}).load() is None
    steps = []
    resumed = new_unet(arch, 16, seed=0)
    train_reference(resumed, text_encoder, tokenizer, loop, lambda step, terms: steps.append(step), checkpoint)
    assert steps == [4]
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_lognormal_noise_levels_follow_their_sigma_distribution():
    from diffusers import DDPMScheduler

    from distar.worlds.shapes.reference import SCHEDULER_CONFIG, NoiseLevels

    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    loop = ReferenceLoop(log_sigma_mean=-0.5, log_sigma_std=1.5)
    t = NoiseLevels(scheduler, loop, torch.Generator().manual_seed(0))(20000)
    a = scheduler.alphas_cumprod[t]
    log_sigma = 0.5 * ((1 - a) / a).log()
    # the nearest step's ln σ has the requested mean and spread, and each step range gets the normal's mass
    assert abs(float(log_sigma.mean()) + 0.5) < 0.05 and abs(float(log_sigma.std()) - 1.5) < 0.05
    all_log_sigma = 0.5 * ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod).log()
    for step in (50, 200, 600):
        expected = 0.5 * (1 + math.erf((float(all_log_sigma[step]) + 0.5) / (1.5 * math.sqrt(2))))
        assert abs(float((t <= step).float().mean()) - expected) < 0.02, step
    uniform = NoiseLevels(scheduler, ReferenceLoop(noise_levels="uniform"), torch.Generator().manual_seed(0))(20000)
    assert 0.45 < float((uniform >= 500).float().mean()) < 0.55


def test_reader_keeps_the_words_that_clip_squashes(shipped):
    """The CLIP analogue's text states hardly change with the shape or position word; a short reading
    fine-tune (text only) separates them as much as a colour word."""
    from distar.worlds.shapes.reader import ReaderLoop, train_reader
    from distar.inference.pixel import encode_prompts

    clip, tokenizer = load_clip("clip", shipped)
    pairs = [("a large red square", "a large red triangle"), ("a red square on the left", "a red square on the right")]

    def change(model) -> list[float]:
        """Largest change of a token state between the two prompts of each pair, over the mean state norm."""
        with torch.no_grad():
            states = [encode_prompts(model, tokenizer, pair) for pair in pairs]
        return [float((s[0] - s[1]).norm(dim=-1).max() / s[0].norm(dim=-1).mean()) for s in states]

    encoder = text_encoder_from_clip(clip)
    assert max(change(encoder)) < 0.4, change(encoder)
    # the build's reader stage (300 steps × 256) made the shipped reference's text encoder
    shipped_reader = CLIPTextModel.from_pretrained(shipped / "reference" / "text_encoder")
    assert min(change(shipped_reader)) > 0.9, change(shipped_reader)
    train_reader(encoder, tokenizer, ReaderLoop(steps=120, batch_size=64, lr=3e-3, seed=8), lambda step, terms: None)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert min(change(encoder)) > 0.7, change(encoder)


def test_samplers_are_deterministic_and_unknown_names_refused(shipped):
    from distar.inference.pixel import ReferenceSampler, sampler_scheduler

    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_scheduler("euler")
    for name in ("dpm++", "ddim"):
        sampler = ReferenceSampler.from_pretrained(shipped / "reference", steps=3, guidance_scale=3.0, sampler=name)
        a = sampler.generate_images(["a red circle", "two blue squares"], [0, 1])
        b = sampler.generate_images(["two blue squares"], [1])
        assert a.shape == (2, 3, 32, 32) and torch.allclose(a[1:], b, atol=1e-5), name


@pytest.fixture(scope="module")
def built_to_the_reference(tmp_path_factory) -> Path:
    """The `.building` folder of an uninterrupted tiny build, stopped before the one-step stages."""
    from distar.cli import main
    from distar.worlds.shapes import build

    out = tmp_path_factory.mktemp("straight") / "models"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "distill_one_step", _stopped)
        assert main(["world", "build", "--out", str(out), "shapes", *TINY_BUILD]) == 130  # "interrupted"
    return out.with_name("models.building")


def _stopped(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("stage, name", [("reference", "SIGTERM"), ("clip", "SIGINT")])
def test_a_stop_signal_ends_the_build_after_a_step_and_resume_gives_the_same_models(
    stage, name, built_to_the_reference, tmp_path, monkeypatch, capsys
):
    """The signal arrives during the stage's first step; the build exits 75 with one line, keeps its
    finished stages (the reference its state at that step), and --resume makes the models of the
    uninterrupted build, bit for bit (both stopped before the one-step stages)."""
    import os
    import signal

    from distar.cli import main
    from distar.train.preemption import EXIT_PREEMPTED
    from distar.worlds.shapes import build

    progress = build._Build._log

    def signalled(self, label, steps, every=50):
        log = progress(self, label, steps, every)

        def send(step, terms):
            if label == stage and step == 0:
                os.kill(os.getpid(), signal.Signals[name])
            log(step, terms)

        return send

    out = tmp_path / "models"
    monkeypatch.setattr(build._Build, "_log", signalled)
    assert main(["world", "build", "--out", str(out), "shapes", *TINY_BUILD]) == EXIT_PREEMPTED
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distar world: stopped")]
    assert len(lines) == 1 and f"stopped by {name} after step 1/2 of the {stage} stage" in lines[0], lines
    building = tmp_path / "models.building"
    if stage == "reference":
        assert torch.load(building / "reference.partial" / "state.pt", weights_only=True)["fit"]["step"] == 1
    monkeypatch.setattr(build._Build, "_log", progress)
    monkeypatch.setattr(build, "distill_one_step", _stopped)
    assert main(["world", "build", "--resume", "--out", str(out), "shapes", *TINY_BUILD]) == 130
    printed = capsys.readouterr().out
    assert f"[{stage}] start" in printed and ("continuing from step 1" in printed) == (stage == "reference")
    files = sorted(built_to_the_reference.rglob("*.safetensors"))
    assert len(files) >= 4
    for file in files:
        assert file.read_bytes() == (building / file.relative_to(built_to_the_reference)).read_bytes(), file
