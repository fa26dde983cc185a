"""``distar rewards train``: fine-tune a CLIP-architecture model on preference pairs as PickScore was trained.

Each step takes a batch of pairs (:mod:`distar.rewards.preference`) and minimises the Bradley–Terry loss
of the temperature-scaled cosines, s (cos_0 − cos_1) with s = exp(logit_scale) trained along, ties as half
a win each. Every weight of the ``CLIPModel`` trains (both towers, projections, logit scale) with AdamW,
a linear warm-up and a cosine decay; the model stays in eval mode (CLIP has no dropout to turn on).

The pairs are split by prompt, with a fixed seed, into training pairs and held-out pairs (no prompt in
both), unless ``heldout_data`` names the held-out pairs. The order of the training pairs is a function of
the step (a fresh permutation per epoch), so a run resumed from a checkpoint takes the very batches, and ends with the very weights, of the run that was
never stopped. The output folder, once done, is a ``CLIPModel`` folder with tokenizer and
``preprocessor_config.json`` that loads as ``rewards: [{name: pickscore, path: OUT}]``, plus
``report.json`` / ``report.md`` (held-out agreement, tie-aware accuracy and calibration, before and
after), ``log.jsonl`` and the last checkpoints (``checkpoint-<step>/``, written as training's are:
complete or absent, with a manifest).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from distar.config import ConfigError, config_yaml, field, save_config
from distar.io import writable_dir, write_atomic
from distar.rewards import hub
from distar.rewards.clip import CLIPSimilarityReward, PickScore, processor_source
from distar.rewards.preference import (
    PreferencePair,
    agreement_stats,
    bradley_terry_loss,
    decode,
    preference_logits,
    read_pairs,
)
from distar.rewards.spec import RewardSpec
from distar.runstate import write_dir
from distar.runtime import check_seed
from distar.train.runfolder import clear_run, record_written
from distar.train.checkpoint import (
    CONFIG_FILE,
    LOG_FILE,
    TRAINER_STATE_FILE,
    check_new_run,
    load_tensors,
    prune_checkpoints,
    read_json,
    remove_leftovers,
    resolve_checkpoint,
    save_tensors,
)
from distar.train.logs import JsonlLog

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
REPORT_FILE = "report.json"


@dataclass
class RewardTrainConfig:
    """Fine-tuning a reward model on preference pairs (``distar rewards train``)."""

    data: str = field(
        help="pairs: a JSONL (prompt, image_0, image_1, label), a collection folder, or Pick-a-Pic parquet"
    )
    base: str = field(help="the CLIPModel to start from: a folder or hub id (PickScore, a CLIP, a tiny one)")
    out: str = field(help="output folder: the trained model, its report, log and checkpoints")
    processor: str | None = field(
        None, help="folder or hub id of the tokenizer and preprocessor config when `base` has none "
        "(default: PickScore's, laion/CLIP-ViT-H-14-laion2B-s32B-b79K)",
    )
    steps: int = field(1000, help="optimiser steps")
    batch_size: int = field(16, help="pairs per step")
    lr: float = field(3e-6, help="AdamW peak learning rate (PickScore's), linear warm-up then cosine decay to 0")
    warmup_steps: int = field(50, help="steps of linear learning-rate warm-up")
    weight_decay: float = field(0.35, help="AdamW weight decay (PickScore's)")
    max_grad_norm: float | None = field(1.0, help="clip the gradient norm to this (null: never)")
    heldout: float = field(0.1, help="fraction of the prompts whose pairs are held out for the report")
    heldout_data: str | None = field(
        None, help="pairs held out for the report, in any layout of `data` (then every pair of `data` trains)"
    )
    seed: int = field(0, help="seed of the held-out split and of the batch order")
    eval_batch_size: int = field(32, help="pairs per forward pass in the held-out evaluation")
    calibration_bins: int = field(10, help="bins of the model's probability in the calibration table")
    checkpoint_every: int = field(200, help="write a checkpoint every this many steps (0: only at the end)")
    total_limit: int = field(2, help="checkpoints kept (the oldest are deleted)")
    device: str | None = field(None, help="torch device (default: cuda if available, else cpu)")
    local_files_only: bool = field(False, help="never download the base model; use local files and the hub cache")
    progress_bar: bool = field(True, help="show a progress bar")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size", "total_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if not 0.0 < self.heldout < 1.0:
            raise ConfigError(f"heldout must be in (0, 1), got {self.heldout}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.calibration_bins < 1:
            raise ConfigError(f"calibration_bins must be ≥ 1, got {self.calibration_bins}")
        check_seed(self.seed, "seed")


def split_by_prompt(
    pairs: Sequence[PreferencePair], heldout: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training, held-out) pairs; about ``heldout`` of the prompts (at least one, never all) are held out
    with all their pairs."""
    by_prompt: dict[str, list[PreferencePair]] = defaultdict(list)
    for pair in pairs:
        by_prompt[pair.prompt].append(pair)
    prompts = sorted(by_prompt)
    if len(prompts) < 2:
        raise ConfigError("the data needs pairs of at least two prompts (pairs are held out by prompt)")
    random.Random(seed).shuffle(prompts)
    count = min(len(prompts) - 1, max(1, round(heldout * len(prompts))))
    held = set(prompts[:count])
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


def batch_indices(step: int, *, size: int, batch_size: int, seed: int) -> list[int]:
    """Indices of step ``step``'s training pairs: positions step·B … step·B + B − 1 of a stream that goes
    through a fresh permutation of the ``size`` pairs per epoch."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, size)
        order = _permutation(size, seed, epoch)
        out.append(order[offset])
    return out


_permutations: dict[tuple[int, int, int], list[int]] = {}


def _permutation(size: int, seed: int, epoch: int) -> list[int]:
    key = (size, seed, epoch)
    if key not in _permutations:
        _permutations.clear()
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        _permutations[key] = torch.randperm(size, generator=generator).tolist()
    return _permutations[key]


class PairScorer:
    """The reward model's log-odds that image 0 is preferred, for batches of pairs (differentiable)."""

    def __init__(self, reward: CLIPSimilarityReward, device: torch.device) -> None:
        self.reward = reward
        self.device = device

    def pixels(self, images: Sequence[Path | bytes]) -> Tensor:
        """The images decoded and through the model's transform (each at its own size), stacked."""
        return torch.cat([self.reward.transform(decode(image)[None]) for image in images]).to(self.device)

    def logits(self, pairs: Sequence[PreferencePair]) -> Tensor:
        text = self.reward.embed_text([p.prompt for p in pairs])
        cos = [(self.reward.pixel_embeddings(self.pixels(images)) * text).sum(-1) for images in (
            [p.image_0 for p in pairs], [p.image_1 for p in pairs])]
        return preference_logits(self.reward.model.logit_scale.float(), cos[0], cos[1])

    @torch.no_grad()
    def evaluate(self, pairs: Sequence[PreferencePair], *, batch_size: int, bins: int) -> dict[str, Any]:
        logits = torch.cat([self.logits(pairs[i : i + batch_size]).cpu() for i in range(0, len(pairs), batch_size)])
        labels = torch.tensor([p.label for p in pairs])
        return agreement_stats(logits, labels, bins=bins)


def _schedule(config: RewardTrainConfig) -> Callable[[int], float]:
    warmup = min(config.warmup_steps, config.steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    return factor


def train_reward_model(
    config: RewardTrainConfig, *, resume: bool = False, overwrite: bool = False, device: torch.device | None = None
) -> dict[str, Any]:
    """Train as the module docstring says; returns the report (also written to ``out/report.json``)."""
    from tqdm import tqdm

    from distar.runtime import torch_device

    out = Path(config.out)
    device = device or torch_device(config.device)
    pairs = read_pairs(config.data)
    if config.heldout_data is None:
        train_pairs, heldout_pairs = split_by_prompt(pairs, config.heldout, config.seed)
    else:
        train_pairs, heldout_pairs = pairs, read_pairs(config.heldout_data)
    checkpoint = resolve_checkpoint("latest", out) if resume else None
    if not resume:
        check_new_run(out, overwrite=overwrite)
        if overwrite:
            clear_run(out)  # only what distar wrote there (runfolder's list)
    writable_dir(out, "out")
    record_written(out, LOG_FILE, "report.md", REPORT_FILE)
    remove_leftovers(out)
    if checkpoint is None:
        (out / REPORT_FILE).unlink(missing_ok=True)
        (out / LOG_FILE).unlink(missing_ok=True)

    spec = RewardSpec(
        "pickscore", path=config.base, processor=config.processor, local_files_only=config.local_files_only
    )
    reward = PickScore.from_spec(spec)
    reward.to(device=device, dtype=torch.float32)
    model = reward.model
    names = [name for name, _ in model.named_parameters()]
    parameters = [p.requires_grad_(True) for p in model.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    scorer = PairScorer(reward, device)

    def evaluate() -> dict[str, Any]:
        return scorer.evaluate(heldout_pairs, batch_size=config.eval_batch_size, bins=config.calibration_bins)

    start, state = 0, {}
    if checkpoint is not None:
        state = read_json(checkpoint / TRAINER_STATE_FILE)
        if state.get("config") != _resumable(config):
            raise ConfigError(f"{checkpoint}: written with other settings (data, base, steps, batches or split)")
        with torch.no_grad():
            for param, value in zip(parameters, load_tensors(checkpoint / MODEL_FILE, dict(zip(names, parameters)))):
                param.copy_(value)
        saved = torch.load(checkpoint / OPTIMIZER_FILE, map_location=device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start = int(state["step"])
        JsonlLog(out / LOG_FILE).truncate_after(start)
        logger.info("resuming from %s (step %d of %d)", checkpoint, start, config.steps)
    else:
        save_config(config, out / CONFIG_FILE)
        state = {"config": _resumable(config), "before": evaluate()}

    def save(step: int) -> None:
        def write(tmp: Path) -> None:
            save_tensors(dict(zip(names, parameters)), tmp / MODEL_FILE)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
            (tmp / CONFIG_FILE).write_text(config_yaml(config))
            (tmp / TRAINER_STATE_FILE).write_text(json.dumps({**state, "step": step}))

        write_dir(out / f"checkpoint-{step}", write)
        prune_checkpoints(out, config.total_limit)

    log = JsonlLog(out / LOG_FILE)
    with tqdm(
        total=config.steps, initial=start, desc="reward model", unit="step", disable=not config.progress_bar
    ) as bar:
        for step in range(start, config.steps):
            batch = [train_pairs[i] for i in batch_indices(
                step, size=len(train_pairs), batch_size=config.batch_size, seed=config.seed)]
            logits = scorer.logits(batch)
            labels = torch.tensor([p.label for p in batch], device=device)
            loss = bradley_terry_loss(logits, 1.0 - labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            decided = labels != 0.5
            accuracy = ((logits > 0) == (labels == 0))[decided].float().mean() if bool(decided.any()) else None
            record = {"step": step + 1, "loss": float(loss.detach()), "lr": optimizer.param_groups[0]["lr"]}
            if accuracy is not None:
                record["accuracy"] = float(accuracy)
            log.write([record])
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            bar.update()
            done = step + 1
            if done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0):
                save(done)

    report = {
        "data": config.data, "base": config.base, "steps": config.steps,
        "train_pairs": len(train_pairs), "heldout_pairs": len(heldout_pairs),
        "heldout_prompts": len({p.prompt for p in heldout_pairs}),
        "before": state["before"], "after": evaluate(),
    }
    _save_model(reward, spec, out)
    write_atomic(out / "report.md", render_report(report).encode())
    write_atomic(out / REPORT_FILE, json.dumps(report, indent=2).encode())  # last: the run is complete
    return report


def _resumable(config: RewardTrainConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it."""
    keys = (
        "data", "base", "processor", "steps", "batch_size", "lr", "warmup_steps", "weight_decay", "max_grad_norm",
        "heldout", "heldout_data", "seed",
    )
    return {k: getattr(config, k) for k in keys}


def _save_model(reward: CLIPSimilarityReward, spec: RewardSpec, out: Path) -> None:
    """The trained ``CLIPModel`` with its tokenizer and preprocessor config in ``out``, file by atomic file."""
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with hub.quiet_transformers():
        reward.model.save_pretrained(tmp)
        reward.tokenizer.save_pretrained(tmp)
    folder = str(Path(spec.path).parent) if Path(str(spec.path)).is_file() else str(spec.path)
    processor = processor_source(spec, folder, PickScore.PROCESSOR)
    preprocessor = hub.read_json(processor, "preprocessor_config.json", local_files_only=spec.local_files_only)
    (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    record_written(out, *(path.name for path in tmp.iterdir()))
    for path in sorted(tmp.iterdir()):
        os.replace(path, out / path.name)
    tmp.rmdir()


def render_report(report: dict[str, Any]) -> str:
    """``report.md``: the held-out figures before and after training, and the calibration table."""
    before, after = report["before"], report["after"]
    rows = [
        ("agreement (pairs with a choice)", "agreement", "{:.3f}"),
        ("tie-aware accuracy (ties count ½)", "tie_aware_accuracy", "{:.3f}"),
        ("log-loss (Bradley–Terry)", "log_loss", "{:.4f}"),
        ("Brier score", "brier", "{:.4f}"),
        ("expected calibration error", "ece", "{:.4f}"),
    ]
    lines = [
        "# Reward model report", "",
        f"Base `{report['base']}`, data `{report['data']}`, {report['steps']} steps; "
        f"{report['train_pairs']} training pairs, {report['heldout_pairs']} held-out pairs "
        f"({report['heldout_prompts']} prompts, {after['ties']} ties).", "",
        "| held out | base | trained |", "| --- | --- | --- |",
        *(f"| {label} | {fmt.format(before[key])} | {fmt.format(after[key])} |" for label, key, fmt in rows),
        "", "Calibration of the trained model (P = its probability that image 0 is preferred):", "",
        "| P bin | pairs | mean P | observed |", "| --- | --- | --- | --- |",
        *(f"| {b['bin'][0]:.1f}–{b['bin'][1]:.1f} | {b['pairs']} | {b['mean_p']:.3f} | {b['observed']:.3f} |"
          for b in after["calibration"]),
    ]
    return "\n".join(lines) + "\n"

