"""``distar world build shapes``: train every model of the world from scratch and record how.

Stages (each seeded; timings, versions and quality figures go to ``build_record.json``):

1. tokenizer: word-level CLIP tokenizer of the grammar;
2. ``clip/``: the CLIP analogue (multi-positive contrastive training on rendered scenes);
   ``judge/``: the attribute classifier of the alignment and diversity metrics (supervised on renders);
3. ``reward/``: the PickScore analogue (the CLIP analogue fine-tuned with Bradley–Terry on pairs
   chosen by the simulated human);
4. ``reference/``: the pixel-space UNet (ε-DSM with condition dropout, EMA weights saved) with the
   CLIP analogue's text tower as its text encoder;
5. ``one_step/``: a one-step generator UNet regressed on the reference's DDIM + CFG samples
   (:func:`~distar.worlds.shapes.one_step.distill_one_step`) — the DMD2-like starting point of the
   demo's runs;
6. quality: the classifier's accuracy on held-out renders, the reward model's pairwise accuracy on
   held-out pairs, and for the reference (multi-step, CFG) and the one-step generator: FID
   (CLIP-analogue features) against renders of the same prompts — next to the FID between two sets
   of renders, the floor at this sample size — alignment, true utility and learned reward.

The output folder is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from transformers import CLIPModel, CLIPTokenizer

from distar.config import field, to_dict
from distar.backends import build_backend
from distar.backends.config import ModelConfig
from distar.protocols import ImageModel
from distar.worlds.shapes.clip import (
    MAX_LENGTH,
    ClipArch,
    RewardLoop,
    TrainLoop,
    image_embeddings,
    new_clip,
    pairwise_accuracy,
    preference_pairs,
    save_clip,
    text_embeddings,
    train_clip,
    train_reward,
)
from distar.worlds.shapes.data import render_prompts
from distar.worlds.shapes.grammar import sample_prompts, vocabulary
from distar.worlds.shapes.one_step import DistillLoop, OneStepSampler, distill_one_step
from distar.worlds.shapes.metrics import (
    AlignmentScore,
    AttributeClassifier,
    ImageFeatures,
    JudgeLoop,
    classifier_accuracy,
    train_classifier,
)
from distar.worlds.shapes.reference import (
    ReferenceLoop,
    ReferenceSampler,
    UNetArch,
    new_unet,
    save_reference,
    text_encoder_from_clip,
    train_reference,
)
from distar.worlds.shapes.tokenizer import save_word_tokenizer
from distar.worlds.shapes.utility import TrueUtility, UtilityWeights


@dataclasses.dataclass
class QualityConfig:
    """How the build measures its models."""

    fid_images: int = field(300, help="held-out prompts (one image each) for FID and the other figures")
    sample_steps: int = field(20, help="DDIM steps of the reference sampler")
    guidance_scale: float = field(3.0, help="CFG scale ω of the reference sampler (Eq. 3.5)")
    held_out_pairs: int = field(2000, help="held-out preference pairs for the reward model's accuracy")
    judge_images: int = field(1000, help="held-out renders for the attribute classifier's accuracy")
    seed: int = field(10, help="seed of the held-out prompts, pairs and scenes")


@dataclasses.dataclass
class BuildConfig:
    """Everything that determines the shipped models."""

    clip_arch: ClipArch = field(ClipArch(), help="CLIP analogue (and reward model) architecture")
    clip: TrainLoop = field(TrainLoop(), help="CLIP analogue training")
    judge: JudgeLoop = field(JudgeLoop(), help="attribute classifier training")
    reward: RewardLoop = field(RewardLoop(), help="reward model (Bradley–Terry) fine-tuning")
    utility: UtilityWeights = field(UtilityWeights(), help="the simulated human's utility and choice noise")
    unet_arch: UNetArch = field(UNetArch(), help="reference UNet architecture")
    reference: ReferenceLoop = field(ReferenceLoop(), help="reference diffusion training")
    one_step: DistillLoop = field(DistillLoop(), help="distillation of the one-step generator init")
    quality: QualityConfig = field(QualityConfig(), help="quality measurements")
    threads: int | None = field(None, help="torch CPU threads (default: torch's choice)")


def _progress(stage: str, total: int, every: int, echo: Callable[[str], None]) -> Callable[[int, dict[str, float]], None]:
    start = time.perf_counter()

    def log(step: int, terms: dict[str, float]) -> None:
        if (step + 1) % every == 0 or step + 1 == total:
            elapsed = time.perf_counter() - start
            shown = " ".join(f"{k}={v:.4g}" for k, v in terms.items())
            echo(f"[{stage}] step {step + 1}/{total} {shown} ({elapsed:.0f}s, {elapsed / (step + 1):.2f}s/step)")

    return log


def _fid(features: ImageFeatures, real: torch.Tensor, fake: torch.Tensor) -> float:
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def _files(directory: Path) -> dict[str, dict[str, object]]:
    return {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _versions() -> dict[str, str]:
    import diffusers
    import numpy
    import transformers

    import distar

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "distar": distar.__version__,
        "platform": platform.platform(),
    }


def build_world(out: str | Path, config: BuildConfig, echo: Callable[[str], None] = print) -> dict:
    """Train the world's models into ``out`` (replaced atomically at the end); the build record."""
    out = Path(out)
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    timings: dict[str, float] = {}
    figures: dict[str, object] = {}
    every = 50

    @contextlib.contextmanager
    def timed(stage: str) -> Iterator[None]:
        start = time.perf_counter()
        echo(f"[{stage}] start")
        yield
        timings[stage] = round(time.perf_counter() - start, 1)
        echo(f"[{stage}] done in {timings[stage]:.0f}s")

    total_start = time.perf_counter()
    tokenizer = save_word_tokenizer(tmp / "clip", vocabulary(), MAX_LENGTH)

    with timed("clip"):
        clip = new_clip(len(tokenizer), config.clip_arch, config.clip.seed)
        train_clip(clip, tokenizer, config.clip, _progress("clip", config.clip.steps, every, echo))
        save_clip(clip, tokenizer, tmp / "clip")

    with timed("judge"):
        torch.manual_seed(config.judge.seed)
        judge = AttributeClassifier(config.judge.width)
        train_classifier(judge, config.judge, _progress("judge", config.judge.steps, every, echo))
        judge.eval().requires_grad_(False).save(tmp / "judge")
        figures["judge_accuracy_on_renders"] = classifier_accuracy(judge, config.quality.judge_images, config.quality.seed)
        echo(f"[judge] accuracy on held-out renders: {figures['judge_accuracy_on_renders']}")

    with timed("reward"):
        reward = copy.deepcopy(clip)
        train_reward(reward, tokenizer, config.reward, config.utility, _progress("reward", config.reward.steps, every, echo))
        save_clip(reward, tokenizer, tmp / "reward")
        held_out = preference_pairs(config.quality.held_out_pairs, config.quality.seed, config.utility)
        figures["reward_held_out_pairs"] = dict(pairwise_accuracy(reward, tokenizer, held_out), pairs=len(held_out.prompts))
        echo(f"[reward] held-out pairs: {figures['reward_held_out_pairs']}")

    with timed("reference"):
        text_encoder = text_encoder_from_clip(clip)
        unet = new_unet(config.unet_arch, clip.config.text_config.hidden_size, config.reference.seed)
        ema = train_reference(
            unet, text_encoder, tokenizer, config.reference, _progress("reference", config.reference.steps, every, echo)
        )
        ema.copy_to(unet.parameters())
        save_reference(tmp / "reference", unet, text_encoder, tokenizer)

    sampler = ReferenceSampler(unet, text_encoder, tokenizer, config.quality.sample_steps, config.quality.guidance_scale)
    with timed("one_step"):
        generator, figures["one_step_training"] = distill_one_step(
            sampler, config.one_step, _progress("one_step", config.one_step.steps, every, echo)
        )
        generator.save_pretrained(tmp / "one_step")
        backend = build_backend(
            ModelConfig(
                family="sd", pretrained=str(tmp / "reference"), generator_init=str(tmp / "one_step"),
                t_init=config.one_step.t_init,
            )
        )

    with timed("quality"):
        measure = Quality(clip, reward, tokenizer, judge, config)
        figures["renders"] = measure.renders()
        figures["reference"] = measure(sampler)
        figures["one_step"] = measure(OneStepSampler(backend, "one-step"))
        for name in ("renders", "reference", "one_step"):
            echo(f"[quality] {name}: {figures[name]}")

    timings["total"] = round(time.perf_counter() - total_start, 1)
    record = {
        "config": to_dict(config),
        "timings_seconds": timings,
        "figures": figures,
        "versions": _versions(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
        "files": _files(tmp),
    }
    (tmp / "build_record.json").write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return record


class Quality:
    """FID, alignment, true utility and learned reward of a model's images for held-out prompts."""

    def __init__(
        self,
        clip: CLIPModel,
        reward_model: CLIPModel,
        tokenizer: CLIPTokenizer,
        judge: AttributeClassifier,
        config: BuildConfig,
    ) -> None:
        q = config.quality
        self.prompts = sample_prompts(q.fid_images, q.seed)
        self.features = ImageFeatures(clip)
        self.reward_model, self.tokenizer = reward_model, tokenizer
        self.utility = TrueUtility(config.utility)
        self.alignment = AlignmentScore(judge)
        self.real = render_prompts(self.prompts, [10**6 + i for i in range(len(self.prompts))])[0]

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> dict[str, float]:
        learned = (
            image_embeddings(self.reward_model, images) * text_embeddings(self.reward_model, self.tokenizer, self.prompts)
        ).sum(-1)
        utility = self.utility.score(images, self.prompts)
        return {
            "fid": _fid(self.features, self.real, images),
            "alignment": float(self.alignment.score(images, self.prompts).mean()),
            "true_utility": float(utility.mean()),
            "learned_reward": float(learned.mean()),
            "reward_utility_correlation": float(torch.corrcoef(torch.stack([utility, learned]))[0, 1]),
            "images": len(self.prompts),
        }

    def renders(self) -> dict[str, float]:
        """The same figures for a second set of renders (FID floor at this sample size)."""
        return self.scores(render_prompts(self.prompts, [2 * 10**6 + i for i in range(len(self.prompts))])[0])

    @torch.no_grad()
    def __call__(self, model: ImageModel, batch: int = 50) -> dict[str, float]:
        n = len(self.prompts)
        images = torch.cat(
            [model.generate_images(self.prompts[i : i + batch], range(i, min(i + batch, n))) for i in range(0, n, batch)]
        )
        return self.scores(images)
