"""``distar demo --world shapes``: DI* and its baselines in the shapes world, judged by a simulated human.

Every method starts from the shipped one-step generator (SIM-distilled from the reference by the
build, as DI*-SDXL starts from DMD2) and trains for the same number of steps through
:class:`distar.train.Trainer` on the "sd" backend with the shipped reference (inner CFG ω) and,
where the method has one, the shipped learned reward (the PickScore analogue, cosine form, scale α).
The evaluation suite (:func:`distar.eval.evaluate`) then scores the reference (multi-step DDIM with
CFG), the starting generator and every trained one on the same prompts and seeds:

- ``pickscore``: the learned reward (cosine) — what the methods optimise;
- ``true_utility``: the hidden human utility (:mod:`.utility`) — what they should improve;
- ``alignment``: named attributes read back by the attribute classifier (:mod:`.metrics`);
- ``fid``: Fréchet distance of CLIP-analogue features to renders of the same prompts;
- ``diversity``: mean pairwise cosine distance of CLIP-analogue features across seeds;
- ``open_diversity``: normalised entropy of the classified attributes the prompts leave open;
- seconds per 10 images (the suite's cost measurement).

report.md/json put the change in learned reward next to the change in true utility, relative to the
starting generator: a reward gain without a utility gain is reward hacking.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from distar.config import field, load_config, save_config, to_dict
from distar.objectives.presets import PRESETS, preset
from distar.worlds.shapes.grammar import sample_prompts
from distar.worlds.shapes.one_step import OneStepLoop

#: Rows of the report, in order, with their descriptions.
METRIC_COLUMNS = {
    "pickscore": "learned reward (cosine)",
    "true_utility": "true utility",
    "alignment": "alignment",
    "fid": "FID (CLIP-analogue features)",
    "diversity": "seed diversity",
    "open_diversity": "open-attribute diversity",
}


@dataclasses.dataclass
class ShapesDemoConfig:
    """What ``distar demo --world shapes`` trains and how it evaluates."""

    models: str | None = field(None, help="folder of the world's models (default: the ones shipped in the package)")
    methods: list[str] = field(["sim", "di_pp", "di_star"], help="objective presets to train, each from the same start")
    reward_scale: float | None = field(
        None,
        help="α for methods with a reward; null = the reward model's exp(logit_scale), so that α·r is in "
        "its Bradley–Terry log-odds units",
    )
    guidance_scale: float = field(3.0, help="CFG ω: inner CFG of the divergence and the reference row's sampler")
    train: OneStepLoop = field(
        OneStepLoop(steps=150, train_prompts=2000, seed=5), help="training of each method (steps: --steps)"
    )
    eval_prompts: int = field(32, help="evaluation prompts drawn from the grammar")
    seeds: list[int] = field([0, 1, 2, 3], help="seeds per evaluation prompt (same for every model)")
    reference_steps: int = field(20, help="DDIM steps of the reference row")
    fid_reference_seeds: int = field(4, help="renders per evaluation prompt forming the FID reference set")
    threads: int | None = field(None, help="torch CPU threads (default: torch's choice)")


def _objective(method: str, cfg: ShapesDemoConfig, reward_logit_scale: float):
    if method not in PRESETS:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(PRESETS)})")
    overrides: dict[str, float] = {}
    if PRESETS[method].get("reward_scale", 0.0):
        overrides["reward_scale"] = cfg.reward_scale if cfg.reward_scale is not None else reward_logit_scale
    if PRESETS[method].get("cfg_mode") == "inner":
        overrides["guidance_scale"] = cfg.guidance_scale
    return preset(method, **overrides)


class OpenAttributeDiversity:
    """Set metric ``open_diversity`` (see :func:`.metrics.open_attribute_diversity`)."""

    name = "open_diversity"

    def __init__(self, classifier) -> None:
        self.classifier = classifier

    def compute(self, batches: Iterable[tuple[Tensor, Sequence[dict]]]) -> dict[str, float]:
        from distar.worlds.shapes.metrics import open_attribute_diversity

        images, prompts = [], []
        for batch, records in batches:
            images.append(batch)
            prompts += [r["prompt"] for r in records]
        values = open_attribute_diversity(self.classifier, torch.cat(images), prompts)
        return {"open_diversity": values.pop("open_attribute_diversity"), **values}


def _save_renders(prompts: Sequence[str], seeds: Iterable[int], folder: Path) -> None:
    from distar.worlds.shapes.data import render_prompts

    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(i, p, s) for i, p in enumerate(prompts) for s in seeds]
    images, _ = render_prompts([p for _, p, _ in pairs], [10**7 + 1000 * i + s for i, _, s in pairs])
    for (i, _, s), image in zip(pairs, images):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{i:04d}_{s}.png")


def _report(rows: dict[str, dict], cfg: ShapesDemoConfig, meta: dict) -> str:
    start = rows.get("one_step_init", {})
    header = ["model", *METRIC_COLUMNS.values(), "s / 10 images", "Δ reward", "Δ utility", "train s"]
    lines = ["# Shapes world: DI* and baselines judged by a simulated human", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name] + [_fmt(row.get(k)) for k in METRIC_COLUMNS]
        cells.append(_fmt(row.get("seconds_per_10_images")))
        for key in ("pickscore", "true_utility"):
            delta = None if row.get(key) is None or start.get(key) is None else row[key] - start[key]
            cells.append("" if name in ("reference", "one_step_init") or delta is None else f"{delta:+.4f}")
        cells.append(_fmt(row.get("train_seconds")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Δ reward / Δ utility: change of the learned reward and of the true utility from the starting "
        "one-step generator (one_step_init). A rise in learned reward without a rise in true utility is "
        "reward hacking. Images: grid.png (rows: models, columns: prompts, seed "
        f"{cfg.seeds[0]}; the same prompts and seeds for every model) and eval/<model>/grid.png.",
    ]
    return "\n".join(lines) + "\n"


def comparison_grid(eval_dir: Path, models: Sequence[str], prompts: Sequence[str], seed: int, path: Path) -> None:
    """Rows = models, columns = prompts, all for one seed: the evaluated images, 3× nearest upscaled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(models), len(prompts), figsize=(1.25 * len(prompts), 1.35 * len(models)), squeeze=False)
    for r, model in enumerate(models):
        for c, prompt in enumerate(prompts):
            ax = axes[r][c]
            image = eval_dir / model / "images" / f"{c:05d}_s{seed}.png"
            if image.is_file():
                ax.imshow(Image.open(image).resize((96, 96), Image.Resampling.NEAREST))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(prompt.replace(" on a ", "\non a "), fontsize=5)
            if c == 0:
                ax.set_ylabel(model, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``distar demo --world shapes`` (flags: see :mod:`distar.commands.demo`)."""
    from distar.backends import build_backend
    from distar.backends.config import ModelConfig
    from distar.eval import evaluate
    from distar.eval.benchmarks import Benchmark, PromptItem
    from distar.eval.diversity import Diversity
    from distar.eval.fid import FID
    from distar.rewards import RewardSpec, load_reward
    from distar.worlds.shapes.assets import ASSETS_DIR, asset, build_record, load_clip
    from distar.worlds.shapes.metrics import AlignmentScore, AttributeClassifier, ImageFeatures
    from distar.worlds.shapes.one_step import OneStepSampler, train, train_config
    from distar.worlds.shapes.reference import ReferenceSampler
    from distar.worlds.shapes.utility import TrueUtility

    start = time.perf_counter()
    cfg = load_config(ShapesDemoConfig, args.config, args.overrides)
    steps = {} if args.steps is None else {"steps": args.steps}
    train_loop = dataclasses.replace(cfg.train, seed=cfg.train.seed + args.seed, **steps)
    cfg = dataclasses.replace(cfg, train=train_loop)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    root = Path(cfg.models) if cfg.models else ASSETS_DIR
    reference, reward_dir, init = asset("reference", root), asset("reward", root), asset("one_step", root)
    clip, tokenizer = load_clip("clip", root)
    reward_model, _ = load_clip("reward", root)
    logit_scale = float(reward_model.logit_scale.exp())
    t_init = build_record(root)["config"]["one_step"]["t_init"]
    device = torch.device(args.device)

    prompts = sample_prompts(cfg.train.train_prompts, cfg.train.seed)
    eval_prompts = sample_prompts(cfg.eval_prompts, 1000 + args.seed)
    models, rows = [], {}
    sampler = ReferenceSampler.from_pretrained(
        reference, steps=cfg.reference_steps, guidance_scale=cfg.guidance_scale, name="reference"
    )
    sampler.unet.to(device), sampler.text_encoder.to(device)
    models.append(sampler)
    rows["reference"] = {"train_seconds": None}
    init_backend = build_backend(
        ModelConfig(family="sd", pretrained=str(reference), t_init=t_init, generator_init=str(init)), device=device
    )
    models.append(OneStepSampler(init_backend, "one_step_init"))
    rows["one_step_init"] = {"train_seconds": None}
    logs = {}
    for method in cfg.methods:
        objective = _objective(method, cfg, logit_scale)
        uses_reward = objective.reward_scale != 0.0
        config = train_config(
            reference, objective, cfg.train, prompts, out / "runs" / method, t_init,
            reward=reward_dir if uses_reward else None, generator_init=init,
        )
        config = dataclasses.replace(config, loop=dataclasses.replace(config.loop, cpu=device.type == "cpu"))
        t0 = time.perf_counter()
        backend, records = train(config)
        rows[method] = {"train_seconds": round(time.perf_counter() - t0, 1), "reward_scale": objective.reward_scale}
        logs[method] = records
        models.append(OneStepSampler(backend, method))

    items = tuple(PromptItem(i, p) for i, p in enumerate(eval_prompts))
    benchmark = Benchmark("shapes", items, f"shapes grammar, seed {1000 + args.seed}")
    fid_dir = out / "fid_reference"
    shutil.rmtree(fid_dir, ignore_errors=True)
    _save_renders(eval_prompts, range(cfg.fid_reference_seeds), fid_dir)
    judge = AttributeClassifier.load(asset("judge", root))
    features = ImageFeatures(clip)
    metrics = [
        load_reward(RewardSpec("pickscore", path=str(reward_dir))),
        TrueUtility(),
        AlignmentScore(judge),
        FID(features, fid_dir, resolution=None, batch_size=64, cache=out / "fid_cache"),
        Diversity(features),
        OpenAttributeDiversity(judge),
    ]
    summary = evaluate(models, benchmark, metrics, out / "eval", seeds=cfg.seeds, batch_size=32, timing_images=10)
    for result in summary.models:
        row = rows[result.name]
        row.update({k: v for k, v in result.scores.items()})
        row.update({k: v for k, v in result.extras.items() if k.startswith("open_")})
        if result.cost:
            row["seconds_per_10_images"] = result.cost["seconds_per_10_images"]
        if result.failures:
            row["failures"] = result.failures
    meta = {
        "methods": ", ".join(cfg.methods),
        "steps per method": cfg.train.steps,
        "batch size": cfg.train.batch_size,
        "reward scale α (methods with a reward)": round(cfg.reward_scale if cfg.reward_scale is not None else logit_scale, 4),
        "inner CFG ω": cfg.guidance_scale,
        "evaluation": f"{len(eval_prompts)} prompts × {len(cfg.seeds)} seeds",
        "torch threads": torch.get_num_threads(),
        "load average at end": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "total seconds": round(time.perf_counter() - start, 1),
    }
    comparison_grid(out / "eval", list(rows), eval_prompts[:8], cfg.seeds[0], out / "grid.png")
    report = {"config": to_dict(cfg), "meta": meta, "models": rows, "train_logs": logs}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_report(rows, cfg, meta))
    print((out / "report.md").read_text())
    return 0
