"""``distar demo --world shapes``: DI* and its baselines in the shapes world, judged by a simulated human.

The demo is a base config, ``demo.yaml`` (a :class:`~distar.train.TrainConfig` and the world's section
``shapes``, :class:`ShapesSettings`), and a sweep, ``demo_sweep.yaml``, beside this module: every method
(and reward scale) of :func:`grid` × training seeds from the shipped one-step start, trained by
:func:`train` and evaluated by :func:`evaluate`, as ``distar sweep`` runs it. ``distar demo --world
shapes`` sets the keys of :class:`ShapesDemoConfig` in the two files (:data:`KEYS`), runs the sweep,
evaluates the renders, the reference and the start (:func:`evaluate_stage`) and gives the tables and
values of the report that the sweep file lays out (docs/shapes.md, "The demo"). Every process computes
with one torch thread, so a seed gives the same numbers whatever the number of parallel runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from distar.config import ConfigError, field, from_dict, load_config, save_config, set_key, to_dict
from distar.eval.report import labelled_grid, per_seed_means
from distar.io import to_uint8
from distar.objectives.presets import PRESETS, ObjectiveConfig, preset_at
from distar.rewards.hub import quiet_transformers
from distar.train import MonitorConfig, TrainConfig
from distar.runtime import configure_threads, environment, report_threads, stored_parameters
from distar.sweep import Run as SweepRun
from distar.sweep import SweepConfig, as_number, collect, mean_ci95, packaged_sweep, run_sweep, write_report
from distar.worlds.shapes.grammar import ATTRIBUTE_VALUES, sample_prompts
from distar.protocols import BackendModel
from distar.worlds.shapes.one_step import OneStepLoop, one_step_model

#: Method names as the paper writes them.
PAPER_NAMES = {
    "sim": "SIM",
    "di_pp": "Diff-Instruct++",
    "di_star": "DI*",
    "di_star_out": "DI*-out",
    "diff_instruct": "Diff-Instruct",
    "dmd2": "DMD2",
}

#: The demo's base config and sweep (package data beside this module).
BASE_FILE, SWEEP_FILE = (Path(__file__).with_name(name) for name in ("demo.yaml", "demo_sweep.yaml"))

#: Report row of the shipped one-step generator every method starts from.
START = "one-step start"
#: A method whose prompt diversity falls below this fraction of the start's is reported as collapsed.
COLLAPSE = 0.5

#: The figures of every report row (mean, 95 % half-width): the results table's, then alignment per attribute
#: and the training's; demo_sweep.yaml's report lays them out.
FIGURES = (
    "pickscore", "true_utility", "alignment", "fid", "diversity", "prompt_diversity", "open_diversity",
    "seconds_per_10_images", "attribute_alignment", *[f"align_{a}" for a in ATTRIBUTE_VALUES],
    "generator_grad_norm_median", "train_seconds",
)  # fmt: skip


@dataclasses.dataclass
class ShapesSetup:
    """What the demo's keys and a run's section ``shapes`` share: the world's models, the reward, ω and the
    evaluation prompts and FID reference."""

    models: str | None = field(None, help="folder of the world's models (default: the ones shipped in the package)")
    reward: str | None = field(
        None, help="the reward the methods with one train on: the models' learned reward (default), or a reward "
        "plugin (module:Class), e.g. distar.worlds.shapes.utility:TrueUtility, the hidden human's own utility",
    )
    guidance_scale: float = field(3.0, help="CFG ω: inner CFG of the presets that use it and the reference row's sampler")
    eval_prompts: int = field(64, help="evaluation prompts drawn from the grammar")
    fid_reference_seeds: int = field(4, help="renders per evaluation prompt forming the FID reference set")

    def __post_init__(self) -> None:
        if self.reward is not None:
            from distar.rewards import RewardSpec

            if not RewardSpec(self.reward).is_plugin:
                raise ConfigError(f"reward: {self.reward!r} is not a reward plugin (module:Class)")

    @property
    def root(self) -> Path:
        """The folder of the world's models."""
        from distar.worlds.shapes.assets import ASSETS_DIR

        return Path(self.models) if self.models else ASSETS_DIR


@dataclasses.dataclass
class ShapesDemoConfig(ShapesSetup):
    """What ``distar demo --world shapes`` trains and how it evaluates: :class:`ShapesSetup` and the rest."""

    methods: list[str] = field(["sim", "di_pp", "di_star"], help="objective presets to train, each from the same start")
    reward_scale: float = field(
        30.0, help="α of the methods with a reward (Eq. 3.1; distar's sum-over-dimensions convention, docs/shapes.md)"
    )
    sweep: list[float] = field([], help="extra reward scales α: each method with a reward is also trained at each")
    extra: list[str] = field(
        ["di_pp@1000", "di_star@1000"],
        help="further method@α settings to train (default: Diff-Instruct++ at a reward weight like DI*'s at α = 30, "
        "and DI* at a large α, where alignment and diversity fall)",
    )
    train: OneStepLoop = field(
        OneStepLoop(steps=120, train_prompts=2000, seed=5), help="training of each run (steps: --steps)"
    )
    training_seeds: int = field(3, help="training seeds per method (the intervals are over these)")
    seeds: list[int] = field([0, 1, 2, 3], help="evaluation seeds per prompt (the same for every model)")
    diversity_prompt: str = field("a circle", help="prompt of the diversity grid (one row per model, 8 seeds)")
    reference_steps: int = field(20, help="steps of the reference row's sampler")
    reference_sampler: str = field("dpm++", help="the reference row's sampler: dpm++ (DPM-Solver++(2M), Karras σ) or ddim")
    monitor: MonitorConfig = field(
        MonitorConfig(every=30, prompts=64, seeds=[0, 1]),
        help="the training monitor of every run (judge: the CLIP analogue; truth metrics: alignment and true "
        "utility, never selected on; docs/monitor.md)",
    )
    jobs: int | None = field(None, help="parallel one-thread training processes (default: one per CPU core)")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [m for m in self.methods if m not in PRESETS]
        if unknown:
            raise ConfigError(f"unknown method {unknown[0]!r} (choose from {', '.join(PRESETS)})")
        if self.training_seeds < 1:
            raise ConfigError("training_seeds must be ≥ 1")
        if not self.seeds:
            raise ConfigError("seeds must name at least one evaluation seed")
        self.extra_settings()  # checked before any model is built

    def extra_settings(self) -> list[tuple[str, float]]:
        """The ``extra`` settings as (method, α) pairs."""
        settings = []
        for item in self.extra:
            method, at, alpha = item.partition("@")
            if method not in PRESETS or not at:
                raise ConfigError(f"extra: {item!r} is not method@α with a method from {', '.join(PRESETS)}")
            try:
                value = float(alpha)
            except ValueError:
                raise ConfigError(f"extra: {item!r}: α must be a number") from None
            if value and not PRESETS[method].get("reward_scale"):
                raise ConfigError(f"extra: {item!r}: {method} has no reward to scale")
            settings.append((method, value))
        return settings

    @property
    def reference_name(self) -> str:
        """How the report names the reference row's sampler."""
        return f"{self.reference_steps}-step {self.reference_sampler}, CFG {self.guidance_scale:g}"


@dataclasses.dataclass
class ShapesSettings(ShapesSetup):
    """The shapes world's section of a training run's config: :class:`ShapesSetup`, the training prompts, the
    device and the evaluation prompts' seed and seeds."""

    train_prompts: int = field(2000, help="training prompts drawn from the grammar")
    prompts_seed: int = field(5, help="seed of the training prompts' draw (the same for every training seed)")
    device: str = field("cpu", help="torch device of the training and the evaluation")
    eval_prompts_seed: int = field(1000, help="seed of the evaluation prompts' draw")
    eval_seeds: list[int] = field([0, 1, 2, 3], help="evaluation seeds per prompt (the same for every model)")


#: Each training key of :class:`ShapesDemoConfig` → the keys it sets: in the base config (``demo.yaml``)
#: or, after ``sweep:``, in the sweep (``demo_sweep.yaml``). The grid keys (methods, reward_scale, sweep,
#: extra) form the sweep's grid (:func:`grid`); ``--seed S`` sets ``shapes.eval_prompts_seed`` to 1000 + S;
#: the others are the fixed rows' and the figures' (reference sampler, diversity prompt).
KEYS = {
    **{f.name: [f"shapes.{f.name}"] for f in dataclasses.fields(ShapesSetup)},
    "train.steps": ["loop.max_steps"], "train.batch_size": ["data.batch_size"],
    "train.generator_lr": ["optim.generator.lr"], "train.assistant_lr": ["optim.assistant.lr"],
    "train.max_grad_norm": ["optim.generator.max_grad_norm", "optim.assistant.max_grad_norm"],
    "train.train_prompts": ["shapes.train_prompts"], "train.seed": ["seed", "shapes.prompts_seed"],
    "monitor": ["monitor"], "seeds": ["shapes.eval_seeds"], "training_seeds": ["sweep:seeds"], "jobs": ["sweep:jobs"],
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a method at a reward scale from one training seed."""

    method: str
    reward_scale: float
    seed_index: int

    @classmethod
    def of(cls, run: SweepRun) -> Run:
        """The demo's view of a run of its sweep."""
        return cls(run.point["objective.preset"], run.point["objective.reward_scale"], run.seed)

    @property
    def group(self) -> str:
        """Report row of the run: the method, with α when it has a reward."""
        name = PAPER_NAMES.get(self.method, self.method)
        return f"{name} (α = {self.reward_scale:g})" if self.reward_scale else name

    @property
    def key(self) -> str:
        """Folder-safe name of the run."""
        alpha = f"_a{self.reward_scale:g}" if self.reward_scale else ""
        return f"{self.method}{alpha}_s{self.seed_index}"


def grid(cfg: ShapesDemoConfig) -> list[dict[str, list[Any]]]:
    """The sweep's grid: each method × reward scales (``reward_scale`` then ``sweep``, reward methods only;
    0 for the others), then the ``extra`` settings (those planned already run once)."""
    products = []
    for method in cfg.methods:
        has_reward = bool(PRESETS[method].get("reward_scale", 0.0))
        scales = [cfg.reward_scale, *[a for a in cfg.sweep if a != cfg.reward_scale]] if has_reward else [0.0]
        products.append({"objective.preset": [method], "objective.reward_scale": scales})
    extra = cfg.extra_settings()
    return products + [{"objective.preset": [method], "objective.reward_scale": [alpha]} for method, alpha in extra]


def sweep_and_base(cfg: ShapesDemoConfig, *, device: str = "cpu", threads: int = 1) -> tuple[SweepConfig, dict[str, Any]]:
    """The demo's sweep and base config (``demo_sweep.yaml``, ``demo.yaml``) with each of ``cfg``'s training
    keys set at its keys (:data:`KEYS`), its grid, ``device`` and ``threads`` torch threads per worker."""
    sweep, base = packaged_sweep(SWEEP_FILE, BASE_FILE, to_dict(cfg), KEYS, grid=grid(cfg), threads=threads)
    set_key(base, "shapes.device", device)
    return sweep, base


def settings(data: dict[str, Any]) -> ShapesSettings:
    """The world's section of a sweep run's config."""
    return from_dict(ShapesSettings, data.get("shapes", {}), prefix="shapes.")


def objective(data: dict[str, Any]) -> ObjectiveConfig:
    """A run's preset at its α (presets with a reward) and the world's inner CFG ω."""
    point = data["objective"]
    return preset_at(point["preset"], reward_scale=point.get("reward_scale"), guidance_scale=settings(data).guidance_scale)


def run_config(data: dict[str, Any], folder: Path) -> TrainConfig:
    """A sweep run's :class:`TrainConfig` in ``folder``: the config without its ``shapes`` section, with the
    world's reference, start and (α > 0) reward, its training prompts, the resolved objective and the
    monitor's judges and truth metrics, sharing the sweep's cache of reference images."""
    from distar.rewards import RewardSpec
    from distar.worlds.shapes.assets import asset, build_record
    from distar.worlds.shapes.guardrails import monitor_config

    cfg = settings(data)
    config = from_dict(TrainConfig, {k: v for k, v in data.items() if k not in ("shapes", "objective")})
    root = cfg.root
    model = dataclasses.replace(
        config.model, pretrained=str(asset("reference", root)), t_init=build_record(root)["config"]["one_step"]["t_init"],
        generator_init=str(asset("one_step", root)),
    )  # fmt: skip
    goal = objective(data)
    reward = RewardSpec(cfg.reward) if cfg.reward else RewardSpec("pickscore", path=str(asset("reward", root)))
    return dataclasses.replace(
        config, model=model, rewards=[reward] if goal.reward_scale else [], objective=goal,
        data=dataclasses.replace(config.data, prompts=sample_prompts(cfg.train_prompts, cfg.prompts_seed)),
        loop=dataclasses.replace(config.loop, cpu=cfg.device == "cpu"), output_dir=str(folder),
        monitor=monitor_config(config.monitor, root, folder.parent.parent / "monitor_reference.safetensors"),
    )  # fmt: skip


def train(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Sweep runner: train the run (from scratch again if it was interrupted: it keeps no checkpoint), save
    the generator to ``generator`` (and the monitor's selection to ``selected_generator``), summarise the log."""
    from safetensors.torch import load_file

    from distar.train.checkpoint import LOG_FILE
    from distar.train.logs import JsonlLog
    from distar.train.monitor_replay import read_run
    from distar.worlds.shapes.guardrails import TRUTH
    from distar.worlds.shapes.one_step import train as train_one_step

    start = time.perf_counter()
    config = run_config(data, folder)
    backend, _ = train_one_step(config, resume="latest")
    records = JsonlLog(folder / LOG_FILE).read()
    backend.generator.save_pretrained(folder / "generator")
    monitored = read_run(folder, z=config.monitor.z, truth=TRUTH) if (folder / "monitor.jsonl").is_file() else None
    if monitored and monitored["best_step"] not in (None, config.loop.max_steps):
        backend.generator.load_state_dict(load_file(folder / "best" / "generator.safetensors"), strict=False)
        backend.generator.save_pretrained(folder / "selected_generator")
    clip = config.optim.generator.max_grad_norm
    norms = [r["generator/grad_norm"] for r in records if "generator/grad_norm" in r]
    return {
        "train_seconds": round(time.perf_counter() - start, 1),
        "generator_grad_norm_median": float(np.median(norms)) if norms else None,
        "generator_grad_norm_max": float(max(norms)) if norms else None,
        "steps_clipped": sum(n > clip for n in norms) if clip else 0,
        "steps": len(records),
        "log": records,
        "monitor": monitored,
    }


class Renders:
    """The renderer as an image model: ground-truth images of each prompt (seeds apart from the FID set)."""

    name = "renders"

    def generate_images(self, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        from distar.worlds.shapes.data import render_prompts

        return render_prompts(prompts, [3 * 10**7 + 10 * (zlib.crc32(p.encode()) % 10**5) + s for p, s in zip(prompts, seeds)])[0]


class ReadBack:
    """Set metric (:class:`distar.eval.SetMetric`) of the attribute classifier's readings of all images:
    ``attribute_alignment`` (the mean over attributes and ``align_<attribute>``, :func:`.metrics.attribute_alignment`)
    or ``open_diversity`` (and ``open_<attribute>_diversity``, :func:`.metrics.open_attribute_diversity`)."""

    def __init__(self, name: str, classifier) -> None:
        self.name, self.classifier = name, classifier

    def compute(self, batches: Iterable[tuple[Tensor, Sequence[dict]]]) -> dict[str, float]:
        from distar.worlds.shapes.metrics import attribute_alignment, open_attribute_diversity

        images, prompts = [], []
        for batch, records in batches:
            images.append(batch)
            prompts += [r["prompt"] for r in records]
        if self.name == "open_diversity":
            return open_attribute_diversity(self.classifier, torch.cat(images), prompts)
        per_attribute = attribute_alignment(self.classifier, torch.cat(images), prompts)
        return {self.name: float(np.mean(list(per_attribute.values()))), **{f"align_{a}": v for a, v in per_attribute.items()}}


def _save_renders(prompts: Sequence[str], seeds: Iterable[int], folder: Path) -> None:
    from distar.worlds.shapes.data import render_prompts

    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(i, s) for i in range(len(prompts)) for s in seeds]
    images, _ = render_prompts([prompts[i] for i, _ in pairs], [10**7 + 1000 * i + s for i, s in pairs])
    for (i, s), array in zip(pairs, to_uint8(images)):
        Image.fromarray(array).save(folder / f"{i:04d}_{s}.png")


def aggregate(
    rows: dict[str, dict[str, Any]], groups: dict[str, list[str]], folders: dict[str, Path]
) -> dict[str, dict[str, tuple[float, float]]]:
    """(mean, 95 % half-width) of every figure of every report row.

    A row of several models (a method's training seeds) is aggregated over them; a fixed model's
    per-image scores over its evaluation seeds (its set metrics have no interval).
    """
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for label, members in groups.items():
        if len(members) > 1:
            out[label] = {k: mean_ci95([as_number(rows[m].get(k)) for m in members]) for k in FIGURES}
            continue
        per_seed = per_seed_means(folders[members[0]], ["pickscore", "true_utility", "alignment"])
        out[label] = {k: mean_ci95(per_seed[k]) if per_seed.get(k) else (as_number(rows[members[0]].get(k)), math.nan) for k in FIGURES}
    return out


def verdicts(stats: dict[str, dict[str, tuple[float, float]]], groups: Sequence[str], start: str) -> list[str]:
    """For each method, whether its learned-reward gain came with a true-utility gain and kept alignment and diversity."""

    def change(group: str, key: str) -> tuple[float, float, str]:
        (m, h), (m0, _) = stats[group][key], stats[start][key]
        delta = m - m0
        word = "rose" if delta > 0 else "fell"
        significant = math.isfinite(h) and abs(delta) > h
        return delta, h, word if significant else "did not change significantly"

    lines = []
    for group in groups:
        parts = []
        for key, label in (("pickscore", "learned reward"), ("true_utility", "true utility"), ("alignment", "alignment"), ("open_diversity", "open-attribute diversity")):
            delta, h, word = change(group, key)
            parts.append((label, word, f"{label} {word} ({delta:+.3f} ± {h:.3f})"))
        reward_word, utility_word = parts[0][1], parts[1][1]
        if reward_word == "rose" and utility_word == "rose":
            story = "a real gain: the hidden human agrees with the learned reward"
        elif reward_word == "rose":
            story = "**reward hacking**: the learned reward rose without the hidden human's utility rising"
        elif utility_word == "rose":
            story = "the hidden human's utility rose although the learned reward did not"
        elif utility_word == "fell":
            story = "the hidden human's utility fell"
        else:
            story = "no significant change in either reward"
        fell = [label for label, word, _ in parts[2:] if word == "fell"]
        tail = f"; but {' and '.join(fell)} fell" if fell else "; alignment and open-attribute diversity kept"
        (spread, _), (spread0, _) = stats[group]["prompt_diversity"], stats[start]["prompt_diversity"]
        if spread < COLLAPSE * spread0:
            tail += (
                f"; **collapsed**: its images hardly depend on the prompt (prompt diversity {spread:.3f}, "
                f"start {spread0:.3f})"
            )
        lines.append(f"- **{group}**: {story}{tail}. " + "; ".join(p[2] for p in parts) + " (from the one-step start).")
    return lines


def training_table(
    cfg: ShapesDemoConfig, stats: dict[str, dict[str, tuple[float, float]]], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """The report's training settings per method (``runs``: each report row's training runs): α, inner CFG ω,
    generator lr, clip norm, median generator grad norm, steps clipped of all and train seconds per run."""
    return {
        group: {
            "alpha": f"{rows[0]['reward_scale']:g}" if rows[0]["reward_scale"] else "–",
            "guidance_scale": f"{cfg.guidance_scale:g}", "generator_lr": f"{cfg.train.generator_lr:g}",
            "max_grad_norm": f"{cfg.train.max_grad_norm:g}", "generator_grad_norm_median": stats[group]["generator_grad_norm_median"],
            "steps_clipped": f"{sum(r['steps_clipped'] for r in rows)} of {sum(r['steps'] for r in rows)}",
            "train_seconds": stats[group]["train_seconds"],
        }
        for group, rows in runs.items()
    }


def run(args: argparse.Namespace) -> int:
    """Entry point of ``distar demo --world shapes`` (flags: see :mod:`distar.commands.demo`)."""
    start = time.perf_counter()
    cfg = load_config(ShapesDemoConfig, args.config, args.overrides)
    steps = {} if args.steps is None else {"steps": args.steps}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + args.seed, **steps))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    threads = configure_threads(args.threads, parameters=stored_parameters(cfg.root))
    report_threads(threads, "demo")
    sweep, base = sweep_and_base(cfg, device=args.device, threads=threads)
    set_key(base, "shapes.eval_prompts_seed", 1000 + args.seed)
    runs = run_sweep(sweep, out, base=base)
    jobs = max(1, min(sweep.jobs, len(runs)))
    results = collect(out)
    by_name = {r.name: r for r in runs}
    trained = [
        (Run.of(by_name[name]), out / "runs" / folder, row)
        for point in results["points"]
        for name, folder, row in zip(point["runs"], point["folders"], point["per_seed"])
    ]
    with quiet_transformers():
        rows, groups, folders = evaluate_stage(cfg, base, trained, out)
    stats = aggregate(rows, groups, folders)
    meta = {
        "methods": ", ".join(PAPER_NAMES.get(m, m) for m in cfg.methods),
        "runs": f"{len(runs)} ({cfg.training_seeds} training seeds each), {cfg.train.steps} steps × {cfg.train.batch_size} prompts",
        "evaluation": f"{cfg.eval_prompts} prompts × {len(cfg.seeds)} seeds; reference: {cfg.reference_name}",
        "torch threads per process": threads,
        "parallel runs": jobs,
        "load average at end": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "total seconds": round(time.perf_counter() - start, 1),
    }
    from distar.worlds.shapes.guardrails import monitor_report

    settings = {label: members for label, members in groups.items() if "method" in rows[members[0]]}
    digits = {key: column.digits for key, column in sweep.report.columns.items()}
    monitor_tables, monitor_values, monitor_figures = monitor_report(
        rows=rows, settings=settings, start=stats[START], digits=digits, out=out
    )
    tables = {
        "models": stats, "training": training_table(cfg, stats, {g: [rows[m] for m in ms] for g, ms in settings.items()}),
        **monitor_tables,
    }  # fmt: skip
    context = {
        "config": to_dict(cfg), "meta": meta, "evaluation_seeds": len(cfg.seeds),
        "verdicts": "\n".join(verdicts(stats, list(settings), START)), **monitor_values,
    }  # fmt: skip
    write_report(out, results, tables=tables, context=context)
    report = {
        "monitor": monitor_figures,
        "config": to_dict(cfg), "meta": meta, "environment": environment(),
        "stats": {name: {k: list(v) for k, v in s.items()} for name, s in stats.items()},
        "models": {name: {k: v for k, v in row.items() if k != "log"} for name, row in rows.items()},
        "train_logs": {name: row["log"] for name, row in rows.items() if "log" in row},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"report: {(out / 'report.md').resolve()}")
    return 0


def one_step(cfg: ShapesSettings, generator: Path, name: str) -> BackendModel:
    """The one-step generator saved in ``generator`` on the world's reference, as an image model named ``name``."""
    from distar.worlds.shapes.assets import asset, build_record

    root = cfg.root
    t_init = build_record(root)["config"]["one_step"]["t_init"]
    return one_step_model(asset("reference", root), generator, t_init, name, cfg.device)


def evaluate_models(cfg: ShapesSettings, models: Sequence[Any], out: Path, eval_dir: Path) -> dict[str, dict[str, Any]]:
    """``models`` through the evaluation suite in ``eval_dir`` (the evaluation prompts × seeds; FID against
    renders of the prompts, built once in ``out/fid_reference``): each model's report row by name."""
    from distar.eval import evaluate
    from distar.eval.benchmarks import Benchmark, PromptItem
    from distar.eval.diversity import Diversity
    from distar.eval.fid import FID
    from distar.io import build_once
    from distar.rewards import RewardSpec, load_reward
    from distar.worlds.shapes.assets import asset, load_clip
    from distar.worlds.shapes.metrics import AlignmentScore, AttributeClassifier, ImageFeatures
    from distar.worlds.shapes.utility import TrueUtility

    root = cfg.root
    prompts = sample_prompts(cfg.eval_prompts, cfg.eval_prompts_seed)
    items = tuple(PromptItem(i, p) for i, p in enumerate(prompts))
    benchmark = Benchmark("shapes", items, f"shapes grammar, seed {cfg.eval_prompts_seed}")
    fid_dir = build_once(out / "fid_reference", lambda tmp: _save_renders(prompts, range(cfg.fid_reference_seeds), tmp))
    with quiet_transformers():  # the world's own models load without transformers' reports and bars
        clip, _ = load_clip("clip", root)
        judge = AttributeClassifier.load(asset("judge", root))
        features = ImageFeatures(clip)
        metrics = [
            load_reward(RewardSpec("pickscore", path=str(asset("reward", root)))),
            TrueUtility(),
            AlignmentScore(judge),
            ReadBack("attribute_alignment", judge),
            FID(features, fid_dir, resolution=None, batch_size=64, cache=out / "fid_cache"),
            Diversity(features),
            Diversity(features, across="prompts"),
            ReadBack("open_diversity", judge),
        ]
        summary = evaluate(models, benchmark, metrics, eval_dir, seeds=cfg.eval_seeds, batch_size=32, timing_images=10)
    rows = {}
    for result in summary.models:
        extras = {k: v for k, v in result.extras.items() if k.startswith(("open_", "align_"))}
        row = rows[result.name] = {**result.scores, **extras}
        row["seconds_per_10_images"] = result.cost["seconds_per_10_images"] if result.cost and result.name != "renders" else None
        if result.failures:
            row["failures"] = result.failures
    return rows


def evaluate(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Sweep evaluation: the run's final generator (``final``) and, if the monitor selected another step, its
    selection (``selected``) in ``folder/eval``; the final one's row, the selection's under ``selected``."""
    cfg = settings(data)
    names = {"final": folder / "generator", "selected": folder / "selected_generator"}
    models = [one_step(cfg, path, name) for name, path in names.items() if path.is_dir()]
    rows = evaluate_models(cfg, models, folder.parent.parent, folder / "eval")
    return {**rows["final"], **({"selected": rows["selected"]} if "selected" in rows else {})}


def evaluate_stage(
    cfg: ShapesDemoConfig, base: dict[str, Any], trained: Sequence[tuple[Run, Path, dict]], out: Path
) -> tuple[dict[str, dict], dict[str, list[str]], dict[str, Path]]:
    """Stage 3: renders, reference and start through the evaluation suite beside the runs' own evaluations;
    the report rows, the report groups, each row's evaluation folder and the two image grids."""
    from distar.inference.pixel import ReferenceSampler
    from distar.worlds.shapes.assets import asset

    world = settings(base)
    root = world.root
    sampler = ReferenceSampler.from_pretrained(
        asset("reference", root), steps=cfg.reference_steps, guidance_scale=cfg.guidance_scale,
        sampler=cfg.reference_sampler, name="reference",
    )  # fmt: skip
    sampler.unet.to(world.device), sampler.text_encoder.to(world.device)
    models = {m.name: m for m in (Renders(), sampler, one_step(world, asset("one_step", root), "start"))}
    rows = evaluate_models(world, list(models.values()), out, out / "eval")
    folders = {name: out / "eval" / name for name in rows}
    #: report rows: display name → evaluated model names (a fixed model, or a method's seeds)
    groups: dict[str, list[str]] = {
        "renders (ground truth)": ["renders"],
        f"reference ({cfg.reference_name})": ["reference"],
        START: ["start"],
    }
    generators: dict[str, Path] = {}
    for r, folder, row in trained:
        rows[r.key] = {k: v for k, v in row.items() if k != "selected"} | {"reward_scale": r.reward_scale, "method": r.method}
        folders[r.key], generators[r.key] = folder / "eval" / "final", folder / "generator"
        groups.setdefault(r.group, []).append(r.key)
        if "selected" in row:  # selected_as: the model evaluated as the run's selected checkpoint
            rows[f"{r.key}_selected"], folders[f"{r.key}_selected"] = row["selected"], folder / "eval" / "selected"
            rows[r.key]["selected_as"] = f"{r.key}_selected"
        elif row.get("monitor") and row["monitor"]["best_step"] is not None:
            rows[r.key]["selected_as"] = r.key  # the selection is the final checkpoint

    shown = {label: members[0] for label, members in groups.items()}
    grid_prompts = sample_prompts(world.eval_prompts, world.eval_prompts_seed)[:8]
    seed = world.eval_seeds[0]
    labelled_grid(
        {
            label: [np.asarray(Image.open(folders[name] / "images" / f"{c:05d}_s{seed}.png")) for c in range(len(grid_prompts))]
            for label, name in shown.items()
        },
        [p.replace(" on a ", "\non a ") for p in grid_prompts], out / "grid.png",
    )  # fmt: skip
    def model(name: str) -> Any:
        return models.get(name) or one_step(world, generators[name], name)

    with torch.no_grad():
        labelled_grid(
            {label: list(to_uint8(model(name).generate_images([cfg.diversity_prompt] * 8, range(8)))) for label, name in shown.items()},
            [f"seed {s}" for s in range(8)], out / "diversity.png",
        )  # fmt: skip
    return rows, groups, folders
