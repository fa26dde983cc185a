"""``distar world build shapes``: train every model of the world from scratch and record how.

Stages (each seeded; timings, versions and quality figures go to ``build_record.json``):

1. tokenizer: word-level CLIP tokenizer of the grammar;
2. ``clip/``: the CLIP analogue (multi-positive contrastive training on rendered scenes);
   ``judge/``: the attribute classifier of the alignment and diversity metrics (supervised on renders);
3. ``reward/``: the PickScore analogue (the CLIP analogue fine-tuned with Bradley–Terry on pairs
   chosen by the simulated human);
4. the reference's text encoder (:mod:`~distar.worlds.shapes.reader`): the CLIP analogue's text tower
   taught, on prompts alone, to keep every word and attribute in its states;
5. ``reference/``: the pixel-space UNet (v-prediction DSM at lognormal noise levels with condition
   dropout, EMA weights saved), conditioned on that frozen text encoder;
6. ``one_step/``: the one-step generator the demo starts from, distilled from the reference in two
   stages (:mod:`~distar.worlds.shapes.one_step`): regression on the reference's multi-step CFG samples,
   then the reward-free DMD2 preset through :class:`distar.train.Trainer`;
7. quality: the classifier's accuracy on held-out renders, the reward model's pairwise accuracy on
   held-out pairs, and for the reference (multi-step, CFG), the regression warm start and the
   one-step generator: FID (CLIP-analogue features) against renders of the same prompts — next to
   the FID between two sets of renders, the floor at this sample size — alignment (overall and per
   attribute), true utility and learned reward.

The build happens in ``<out>.building`` and is renamed into place when complete; each finished stage
is recorded there, so ``--resume`` continues an interrupted build. The reference stage, the longest,
also saves its training state every ``reference.checkpoint_every`` steps to
``<out>.building/reference.partial`` (with its EMA weights in ``unet/``, to look at while it trains):
``--resume`` continues it from there, to the weights of an uninterrupted build.

Given a :class:`~distar.train.preemption.StopSignals`, a stop signal ends the build after the optimiser
step in progress (:class:`~distar.errors.Preempted`, exit 75): the reference stage saves its state at that
step, any other stage in progress is abandoned (it is retrained), and ``--resume`` continues.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from diffusers import UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel

from distar import runstate
from distar.config import field, to_dict
from distar.errors import Preempted, first_line
from distar.fit import TrainLoop
from distar.protocols import ImageModel
from distar.worlds.shapes.clip import (
    MAX_LENGTH,
    ClipArch,
    ClipLoop,
    new_clip,
    pairwise_accuracy,
    preference_pairs,
    save_clip,
    train_clip,
    train_reward,
)
from distar.worlds.shapes.data import render_prompts
from distar.worlds.shapes.grammar import sample_prompts, vocabulary
from distar.rewards import RewardSpec, load_reward
from distar.runtime import environment
from distar.train.preemption import StopSignals
from distar.worlds.shapes.one_step import DistillLoop, RefineLoop, distill_one_step, one_step_model, refine_one_step
from distar.worlds.shapes.metrics import (
    AlignmentScore,
    AttributeClassifier,
    ImageFeatures,
    JudgeLoop,
    attribute_alignment,
    classifier_accuracy,
    train_classifier,
)
from distar.inference.pixel import ReferenceSampler
from distar.worlds.shapes.reference import (
    ReferenceCheckpoint,
    ReferenceLoop,
    UNetArch,
    new_unet,
    save_reference,
    train_reference,
)
from distar.worlds.shapes.reader import ReaderLoop, text_encoder_from_clip, train_reader
from distar.worlds.shapes.tokenizer import save_word_tokenizer
from distar.worlds.shapes.utility import TrueUtility, UtilityWeights


@dataclasses.dataclass
class QualityConfig:
    """How the build measures its models."""

    fid_images: int = field(300, help="held-out prompts (one image each) for FID and the other figures")
    sampler: str = field("dpm++", help="the reference's sampler: dpm++ (DPM-Solver++(2M), Karras σ) or ddim")
    sample_steps: int = field(20, help="steps of the reference sampler")
    guidance_scale: float = field(3.0, help="CFG scale ω of the reference sampler (Eq. 3.5)")
    held_out_pairs: int = field(2000, help="held-out preference pairs for the reward model's accuracy")
    judge_images: int = field(1000, help="held-out renders for the attribute classifier's accuracy")
    seed: int = field(10, help="seed of the held-out prompts, pairs and scenes")


@dataclasses.dataclass
class BuildConfig:
    """Everything that determines the shipped models."""

    clip_arch: ClipArch = field(ClipArch(), help="CLIP analogue (and reward model) architecture")
    clip: ClipLoop = field(ClipLoop(), help="CLIP analogue training")
    judge: JudgeLoop = field(JudgeLoop(steps=400, lr=2e-3, seed=6), help="attribute classifier training")
    reward: TrainLoop = field(
        TrainLoop(steps=400, batch_size=64, lr=2e-4, seed=2),
        help="reward model (Bradley–Terry) fine-tuning (a batch: preference pairs; seed: of the simulated pairs)",
    )
    utility: UtilityWeights = field(UtilityWeights(), help="the simulated human's utility and choice noise")
    reader: ReaderLoop = field(
        ReaderLoop(steps=300, batch_size=256, seed=8),
        help="text-only fine-tuning of the reference's text encoder (a batch: prompts)",
    )
    unet_arch: UNetArch = field(UNetArch(), help="reference UNet architecture")
    reference: ReferenceLoop = field(
        ReferenceLoop(steps=8000, batch_size=64, seed=3),
        help="reference diffusion training (seed: of the data stream, the noise and the initialisation)",
    )
    one_step: DistillLoop = field(
        DistillLoop(steps=300, batch_size=32, lr=3e-4, seed=4),
        help="regression warm start of the one-step generator (a batch: (z, sample) pairs; seed: of the prompts, "
        "the noise z and the minibatches)",
    )
    one_step_refine: RefineLoop = field(
        RefineLoop(steps=400, batch_size=16, generator_lr=2e-5, seed=7),
        help="distribution-matching distillation of the one-step generator",
    )
    quality: QualityConfig = field(QualityConfig(), help="quality measurements")
    threads: int | None = field(
        None, help="torch CPU threads; null = --threads, $OMP_NUM_THREADS, else by model size (1 for these models)"
    )


def build_world(
    out: str | Path,
    config: BuildConfig,
    echo: Callable[[str], None] = print,
    resume: bool = False,
    stop: StopSignals | None = None,
) -> dict:
    """Train the world's models into ``out`` (replaced atomically at the end); the build record.

    The build happens in ``<out>.building``; with ``resume`` its completed stages are kept. With
    ``stop``, a stop signal ends the build after the optimiser step in progress (module docstring).
    """
    build = _Build(Path(out), config, echo, resume, stop)
    clip = build.clip()
    judge = build.judge()
    build.reward(clip)
    text_encoder = build.reader(clip)
    unet = build.reference(clip, text_encoder)
    q = config.quality
    sampler = ReferenceSampler(unet, text_encoder, build.tokenizer, q.sample_steps, q.guidance_scale, sampler=q.sampler)
    build.one_step(sampler)
    build.one_step_refine()
    build.quality(clip, judge, sampler)
    return build.finish()


class _Build:
    """The stages of :func:`build_world`, one method each, in ``<out>.building``.

    Each stage's settings are the config sections it depends on (its own and those of the stages it
    builds on); a stage finished by an interrupted build with the same settings is loaded, not retrained.
    """

    def __init__(
        self, out: Path, config: BuildConfig, echo: Callable[[str], None], resume: bool, stop: StopSignals | None
    ) -> None:
        self.out, self.config, self.echo, self.stop = out, config, echo, stop
        self.tmp = out.with_name(out.name + ".building")
        self.stages = runstate.Stages(self.tmp, resume=resume, echo=echo, stop=self._stop_point)
        self.settings = to_dict(config)
        self.start = time.perf_counter()
        self.tokenizer = save_word_tokenizer(self.tmp / "clip", vocabulary(), MAX_LENGTH)

    def _settings(self, *sections: str) -> dict:
        return {k: self.settings[k] for k in sections}

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.received is not None

    def _stop_point(self, where: str) -> None:
        """End the build here (:class:`~distar.errors.Preempted`) if a stop signal came."""
        if self._stopping():
            raise self.stop.preempted(  # type: ignore[union-attr]
                f"{where}: finished stages are kept in {self.tmp} (continue with --resume)"
            )

    def _log(self, stage: str, steps: int, every: int = 50) -> Callable[[int, dict[str, float]], None]:
        """The stage's progress line every ``every`` steps, and a stop point after every optimiser step."""
        start = time.perf_counter()

        def log(step: int, terms: dict[str, float]) -> None:
            if (step + 1) % every == 0 or step + 1 == steps:
                elapsed, shown = time.perf_counter() - start, " ".join(f"{k}={v:.4g}" for k, v in terms.items())
                self.echo(f"[{stage}] step {step + 1}/{steps} {shown} ({elapsed:.0f}s, {elapsed / (step + 1):.2f}s/step)")
            saved = " (its state saved)" if stage == "reference" else " (retrained on --resume)"
            self._stop_point(f"after step {step + 1}/{steps} of the {stage} stage{saved}")

        return log

    def clip(self) -> CLIPModel:
        """The CLIP analogue (contrastive, with hard negatives)."""
        settings, cfg = self._settings("clip_arch", "clip"), self.config
        if self.stages.done("clip", settings):
            return CLIPModel.from_pretrained(self.tmp / "clip")
        with self.stages.run("clip", settings):
            clip = new_clip(len(self.tokenizer), cfg.clip_arch, cfg.clip.seed)
            train_clip(clip, self.tokenizer, cfg.clip, self._log("clip", cfg.clip.steps))
            save_clip(clip, self.tokenizer, self.tmp / "clip")
        return clip

    def judge(self) -> AttributeClassifier:
        """The attribute classifier, and its accuracy on held-out renders."""
        settings, cfg = self._settings("judge", "quality"), self.config
        if self.stages.done("judge", settings):
            return AttributeClassifier.load(self.tmp / "judge")
        with self.stages.run("judge", settings) as figures:
            torch.manual_seed(cfg.judge.seed)
            judge = AttributeClassifier(cfg.judge.width)
            train_classifier(judge, cfg.judge, self._log("judge", cfg.judge.steps))
            judge.eval().requires_grad_(False).save(self.tmp / "judge")
            figures["judge_accuracy_on_renders"] = classifier_accuracy(judge, cfg.quality.judge_images, cfg.quality.seed)
            self.echo(f"[judge] accuracy on held-out renders: {figures['judge_accuracy_on_renders']}")
        return judge

    def reward(self, clip: CLIPModel) -> None:
        """The PickScore analogue, and its agreement with held-out simulated choices."""
        settings, cfg = self._settings("clip_arch", "clip", "reward", "utility", "quality"), self.config
        if self.stages.done("reward", settings):
            return
        with self.stages.run("reward", settings) as figures:
            reward = copy.deepcopy(clip)
            train_reward(reward, self.tokenizer, cfg.reward, cfg.utility, self._log("reward", cfg.reward.steps))
            save_clip(reward, self.tokenizer, self.tmp / "reward")
            held_out = preference_pairs(cfg.quality.held_out_pairs, cfg.quality.seed, cfg.utility)
            figures["reward_held_out_pairs"] = dict(
                pairwise_accuracy(reward, self.tokenizer, held_out), pairs=len(held_out.prompts)
            )
            self.echo(f"[reward] held-out pairs: {figures['reward_held_out_pairs']}")

    def reader(self, clip: CLIPModel) -> CLIPTextModel:
        """The reference's text encoder: the CLIP analogue's text tower taught to read the grammar."""
        settings, cfg = self._settings("clip_arch", "clip", "reader"), self.config
        if self.stages.done("reader", settings):
            return CLIPTextModel.from_pretrained(self.tmp / "reader")
        with self.stages.run("reader", settings):
            text_encoder = text_encoder_from_clip(clip)
            train_reader(text_encoder, self.tokenizer, cfg.reader, self._log("reader", cfg.reader.steps))
            text_encoder.save_pretrained(self.tmp / "reader")
        return text_encoder

    def reference(self, clip: CLIPModel, text_encoder: CLIPTextModel) -> UNet2DConditionModel:
        """The reference UNet (its training state under ``reference.partial`` while it trains)."""
        settings, cfg = self._settings("clip_arch", "clip", "reader", "unet_arch", "reference"), self.config
        if self.stages.done("reference", settings):
            return UNet2DConditionModel.from_pretrained(self.tmp / "reference" / "unet")
        with self.stages.run("reference", settings) as figures:
            unet = new_unet(cfg.unet_arch, clip.config.text_config.hidden_size, cfg.reference.seed)
            partial = ReferenceCheckpoint(
                self.tmp / "reference.partial", cfg.reference.checkpoint_every, settings, stop=self._stopping
            )
            saved = partial.load()
            if saved is not None:
                # the stage's recorded seconds are then those of this invocation only
                figures["reference_resumed_at_step"] = saved["fit"]["step"]
                self.echo(f"[reference] continuing from step {saved['fit']['step']} saved in {partial.folder}")
            train_reference(
                unet, text_encoder, self.tokenizer, cfg.reference, self._log("reference", cfg.reference.steps), partial
            )
            save_reference(self.tmp / "reference", unet, text_encoder, self.tokenizer)
            shutil.rmtree(partial.folder, ignore_errors=True)
        return unet

    def one_step(self, sampler: ReferenceSampler) -> None:
        """Stage 1 of the one-step start: regression on the reference's samples (``one_step.warm``)."""
        sections = ("clip_arch", "clip", "reader", "unet_arch", "reference", "one_step", "quality")
        settings, cfg = self._settings(*sections), self.config
        if self.stages.done("one_step", settings):
            return
        with self.stages.run("one_step", settings) as figures:
            generator, figures["one_step_training"] = distill_one_step(
                sampler, cfg.one_step, self._log("one_step", cfg.one_step.steps)
            )
            generator.save_pretrained(self.tmp / "one_step.warm")

    def one_step_refine(self) -> None:
        """Stage 2: reward-free distribution matching through distar's trainer (``one_step``)."""
        sections = ("clip_arch", "clip", "reader", "unet_arch", "reference", "one_step", "quality", "one_step_refine")
        settings, cfg = self._settings(*sections), self.config
        if self.stages.done("one_step_refine", settings):
            return
        with self.stages.run("one_step_refine", settings) as figures:
            # an interrupted refine saved no checkpoint (save_final=False): it starts over
            shutil.rmtree(self.tmp / "one_step.run", ignore_errors=True)
            try:
                refined, log = refine_one_step(
                    self.tmp / "reference", self.tmp / "one_step.warm", cfg.one_step_refine, cfg.one_step.t_init,
                    self.tmp / "one_step.run",
                )
            except Preempted as err:  # the trainer's own stop: the checkpoint it names is not resumed from
                raise Preempted(
                    f"{first_line(err).split(':')[0]} in the one_step_refine stage (retrained on --resume): "
                    f"finished stages are kept in {self.tmp} (continue with --resume)",
                    err.status,
                ) from None
            refined.save_pretrained(self.tmp / "one_step")
            shutil.rmtree(self.tmp / "one_step.run", ignore_errors=True)
            figures["one_step_refine_log"] = [
                {k: round(v, 5) for k, v in r.items() if k in ("step", "generator/loss", "generator/grad_norm", "assistant/loss")}
                for r in log[:: max(1, len(log) // 40)]
            ]

    def quality(self, clip: CLIPModel, judge: AttributeClassifier, sampler: ReferenceSampler) -> None:
        """FID, alignment, true utility and learned reward of renders, the reference and both starts."""
        with self.stages.run("quality", self.settings) as figures:
            measure = Quality(clip, self.tmp / "reward", judge, self.config)
            figures["renders"] = measure.renders()
            figures["reference"] = measure(sampler)
            starts = {"one_step_warm_start": ("one_step.warm", "regression warm start"), "one_step": ("one_step", "one-step start")}
            for name, (folder, shown) in starts.items():
                figures[name] = measure(one_step_model(self.tmp / "reference", self.tmp / folder, self.config.one_step.t_init, shown))
            for name in ("renders", "reference", "one_step_warm_start", "one_step"):
                self.echo(f"[quality] {name}: {figures[name]}")

    def finish(self) -> dict:
        """Drop the intermediate folders, write ``build_record.json`` and move the build into place."""
        tmp, stages = self.tmp, self.stages
        shutil.rmtree(tmp / "one_step.warm")
        shutil.rmtree(tmp / "reader")
        timings = dict(stages.timings, total=round(sum(stages.timings.values()), 1))
        timings["this_invocation"] = round(time.perf_counter() - self.start, 1)
        shutil.rmtree(stages.dir)
        record = {
            "config": self.settings,
            "timings_seconds": timings,
            "figures": stages.figures,
            "environment": environment(),
            "command": " ".join(sys.argv),
            "files": runstate.manifest_entries(tmp),
        }
        runstate.write_json(tmp / "build_record.json", record)
        runstate.replace_dir(tmp, self.out)
        return record


class Quality:
    """FID, alignment, true utility and learned reward of a model's images for held-out prompts."""

    def __init__(self, clip: CLIPModel, reward: str | Path, judge: AttributeClassifier, config: BuildConfig) -> None:
        q = config.quality
        self.prompts = sample_prompts(q.fid_images, q.seed)
        self.features = ImageFeatures(clip)
        self.reward = load_reward(RewardSpec("pickscore", path=str(reward)))
        self.utility = TrueUtility(config.utility)
        self.alignment = AlignmentScore(judge)
        self.real = render_prompts(self.prompts, [10**6 + i for i in range(len(self.prompts))])[0]

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> dict[str, float]:
        learned = torch.cat(
            [self.reward.score(images[i : i + 100], self.prompts[i : i + 100]) for i in range(0, len(images), 100)]
        )
        utility = self.utility.score(images, self.prompts)
        fid = FrechetInceptionDistance(feature=self.features, normalize=True)
        fid.update(self.real, real=True)
        fid.update(images, real=False)
        return {
            "fid": float(fid.compute()),
            "alignment": float(self.alignment.score(images, self.prompts).mean()),
            "alignment_per_attribute": attribute_alignment(self.alignment.classifier, images, self.prompts),
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
