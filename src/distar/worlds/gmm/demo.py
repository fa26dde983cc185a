"""``distar demo --world gmm``: every method of Table 2 trained with one budget, measured exactly.

The demo is a base config, ``demo.yaml`` (a :class:`~distar.train.TrainConfig` and the world's section
``gmm``, :class:`GMMSettings`), and a sweep, ``demo_sweep.yaml``, beside this module: the objectives of
:func:`grid` × seeds, each run trained from its seed's shared start (:meth:`GMMDemo.build_start`) by
:func:`train` and measured by :func:`evaluate` against exact reference and tilted-target draws; runs of
equal resolved objectives share one training (:func:`identity`). ``distar demo --world gmm`` sets the
flat keys of :class:`GMMDemoConfig` in the two files (:data:`KEYS`), runs the sweep and gives the tables,
values and figures of the report that the sweep file lays out (docs/gmm.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor

from distar.config import ConfigError, field, from_dict, load_config, save_config, set_key, to_dict
from distar.io import build_once
from distar.objectives.presets import PRESETS, ObjectiveConfig, preset, preset_at
from distar.runtime import configure_threads, environment, report_threads
from distar.sweep import SweepConfig, collect, packaged_sweep, plot_pareto, run_sweep, summarise, trainings, write_report
from distar.train import TrainConfig, Trainer
from distar.train.checkpoint import LOG_FILE, save_tensors
from distar.train.logs import JsonlLog
from distar.worlds.gmm.backend import GMMBackend
from distar.worlds.gmm.distill import distill_assistant, distill_generator
from distar.worlds.gmm.metrics import evaluate_samples, tilted_samples
from distar.worlds.gmm.models import GMMNetConfig
from distar.worlds.gmm.plots import plot_samples, plot_training
from distar.worlds.gmm.reward import GMMBumpReward
from distar.worlds.gmm.world import GMMWorld, GMMWorldConfig

#: report.json's method keys, in table order (the reference is not trained).
METHODS = ("di_star", "di_star_out", "di_pp", "sim", "diff_instruct")

#: The grid's keys → their names in report.json's sweep rows.
AXES = {"objective.preset": "method", "objective.reward_scale": "alpha", "objective.huber_c": "huber_c"}

#: The demo's base config and sweep (package data beside this module).
BASE_FILE, SWEEP_FILE = (Path(__file__).with_name(name) for name in ("demo.yaml", "demo_sweep.yaml"))


@dataclass
class GMMSetup:
    """What the demo's flat keys and a run's section ``gmm`` share: world, networks, start, the α, ω and
    α_cfg of the presets, and evaluation."""

    world: GMMWorldConfig = field(GMMWorldConfig(), help="reference mixtures and reward")
    net: GMMNetConfig = field(GMMNetConfig(), help="generator and assistant MLP sizes")
    init: Literal["distill", "scratch"] = field(
        "distill",
        help="start: 'distill' = generator fitted to the reference's probability-flow ODE and assistant "
        "fitted to the reference's x0-predictions (distar.worlds.gmm.distill); 'scratch' = random networks",
    )
    distill_steps: int = field(1500, help="Adam steps of each regression fit (init: distill)")
    distill_lr: float = field(1e-3, help="learning rate of the regression fits (init: distill)")
    init_sim_steps: int = field(0, help="SIM (α = 0) training steps after the init, before any method")
    reward_scale: float = field(3.0, help="α of the reward presets (di_star, di_star_out, di_pp) when a run sets none, and of p*")
    guidance_scale: float = field(1.0, help="inner CFG scale ω (3.5) of the inner-CFG presets; 1 = the exact conditional reference")
    cfg_reward_scale: float = field(1.0, help="α_cfg of the outer-CFG presets (di_star_out, 3.6-3.7)")
    eval_samples: int = field(1000, help="evaluation samples per prompt (per model and per target)")
    tilted_pool: int = field(100_000, help="reference draws per prompt resampled into the tilted target")
    coverage_threshold: float = field(0.1, help="mode k counts as covered when its mass is ≥ this × π_k")

    def __post_init__(self) -> None:
        if min(self.eval_samples, self.tilted_pool) < 1:
            raise ConfigError("eval_samples and tilted_pool must be >= 1")
        if min(self.distill_steps, self.init_sim_steps) < 0:
            raise ConfigError("distill_steps and init_sim_steps must be >= 0")


@dataclass
class GMMSettings(GMMSetup):
    """The gmm world's section ``gmm`` of a run's config: :class:`GMMSetup` and the device."""

    device: str = field("cpu", help="torch device of the networks")


@dataclass
class GMMDemoConfig(GMMSetup):
    """The gmm demo: :class:`GMMSetup`, the shared training budget, the sweeps and the seeds."""

    methods: list[str] = field(list(METHODS), help="objective presets to train and report")
    steps: int = field(1000, help="training steps (generator updates) per method")
    batch_size: int = field(256, help="samples per update (training and regression fits)")
    assistant_steps: int = field(1, help="assistant (DSM) updates per generator update")
    generator_lr: float = field(3e-4, help="generator AdamW learning rate")
    assistant_lr: float = field(1e-3, help="assistant AdamW learning rate")
    sweep_methods: list[str] = field(["di_star", "di_pp"], help="presets swept over reward scales")
    sweep_reward_scales: list[float] = field([0.0, 1.0, 2.0, 3.0, 10.0], help="reward scales α of the sweep")
    huber_c_method: str = field("di_star", help="pseudo-Huber preset of the c sweep")
    huber_c_sweep: list[float] = field(
        [0.01, 0.1, 1.0], help="pseudo-Huber constants c (3.8; objective.huber_c, x0 units per √d) of the c sweep"
    )
    huber_c_reward_scales: list[float] = field([2.0, 3.0], help="reward scales α at which c is swept")
    training_seeds: int = field(3, help="seeds of the whole demo (the intervals are over these)")
    seed: int = field(0, help="seed of seed index 0 (networks, training draws and evaluation)")
    jobs: int | None = field(None, help="parallel one-thread processes (default: one per CPU core)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in [*self.methods, *self.sweep_methods, self.huber_c_method]:
            if name not in PRESETS:
                raise ConfigError(f"unknown method {name!r} (choose from {', '.join(PRESETS)})")
        if self.huber_c_sweep and PRESETS[self.huber_c_method].get("divergence") != "pseudo_huber":
            raise ConfigError(f"huber_c_method: {self.huber_c_method!r} does not use the pseudo-Huber divergence")
        if any(c <= 0 for c in self.huber_c_sweep):
            raise ConfigError("huber_c_sweep: every c must be > 0")
        if min(self.steps, self.batch_size, self.training_seeds) < 1:
            raise ConfigError("steps, batch_size and training_seeds must be >= 1")
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError("jobs must be >= 1")


#: Each flat key of :class:`GMMDemoConfig` → the keys it sets: in the base config (``demo.yaml``) or, after
#: ``sweep:``, in the sweep (``demo_sweep.yaml``). ``steps`` also sets ``logging.every`` to steps / 20; the
#: grid keys (methods, sweep_*, huber_c_*) form the sweep's grid (:func:`grid`).
KEYS = {
    "steps": ["loop.max_steps"], "batch_size": ["data.batch_size"], "assistant_steps": ["loop.assistant_steps"],
    "generator_lr": ["optim.generator.lr"], "assistant_lr": ["optim.assistant.lr"], "seed": ["seed"],
    **{f.name: [f"gmm.{f.name}"] for f in dataclasses.fields(GMMSetup)},
    "training_seeds": ["sweep:seeds"], "jobs": ["sweep:jobs"],
}  # fmt: skip


def settings(data: dict[str, Any]) -> GMMSettings:
    """The world's section of a sweep run's config."""
    return from_dict(GMMSettings, data.get("gmm", {}), prefix="gmm.")


def objective(data: dict[str, Any]) -> ObjectiveConfig:
    """A sweep run's objective: its ``objective.preset`` at the run's α (else the world's), the world's ω and
    α_cfg, and the run's c."""
    cfg, point = settings(data), data["objective"]
    return preset_at(
        point["preset"], reward_scale=point.get("reward_scale", cfg.reward_scale), guidance_scale=cfg.guidance_scale,
        cfg_reward_scale=cfg.cfg_reward_scale, huber_c=point.get("huber_c"),
    )  # fmt: skip


def train_config(data: dict[str, Any], folder: Path) -> TrainConfig:
    """A sweep run's TrainConfig: the config without its ``gmm`` section, the resolved objective, the world's
    prompts (each repeated so one shuffled pass fills a batch: every prompt batch_size / C times) and
    ``folder`` as output_dir."""
    cfg = settings(data)
    config = from_dict(TrainConfig, {k: v for k, v in data.items() if k not in ("gmm", "objective")})
    prompts = GMMWorld(cfg.world).prompts
    prompts = prompts * -(-config.data.batch_size // len(prompts))
    return dataclasses.replace(
        config, objective=objective(data), data=dataclasses.replace(config.data, prompts=prompts),
        loop=dataclasses.replace(config.loop, cpu=cfg.device == "cpu"), output_dir=str(folder),
    )  # fmt: skip


def identity(data: dict[str, Any]) -> dict[str, Any]:
    """What a run trains: runs of equal resolved objectives are one training (SIM = DI* at α = 0)."""
    return {**data, "objective": {k: v for k, v in to_dict(objective(data)).items() if k != "preset"}}


class GMMDemo:
    """One run of the demo in ``folder``: its settings and TrainConfig, and its seed's world, reward, backend
    and fixed evaluation draws."""

    def __init__(self, data: dict[str, Any], folder: Path) -> None:
        self.cfg, self.config = cfg, config = settings(data), train_config(data, folder)
        self.seed = config.seed
        self.world = GMMWorld(cfg.world, device=cfg.device)
        self.reward = GMMBumpReward(self.world).to(cfg.device)
        self.backend = GMMBackend(self.world, cfg.net, seed=self.seed)
        g = torch.Generator().manual_seed(self.seed + 1)
        n, C = cfg.eval_samples, self.world.num_prompts
        self.latents = [self.backend.sample_latents(n, generator=g) for _ in range(C)]
        self.reference = [self.world.sample(c, n, g) for c in range(C)]  # target of energy_distance_ref
        self.reference_rows = [self.world.sample(c, n, g) for c in range(C)]  # the "reference" row
        self._tilted: dict[tuple[float, int], tuple[list[Tensor], list[float]]] = {}

    def train(self, config: TrainConfig) -> None:
        """Train the backend in place with the project's Trainer as ``config`` says (continuing from the newest
        checkpoint in its output_dir)."""
        Trainer(config, self.backend, self.reward, config.data.prompts).train(resume="latest")

    def build_start(self, folder: Path) -> None:
        """Stage 1 of the seed, into ``folder``: the shared start (``generator.safetensors`` and
        ``assistant.safetensors``), the rows of the fixed models (``rows.json``) and the reference and p*
        draws shown in ``samples.png`` (``samples.safetensors``)."""
        cfg, batch, start = self.cfg, self.config.data.batch_size, time.perf_counter()
        if cfg.init == "distill":
            torch.manual_seed(self.seed)
            distill_generator(self.backend, cfg.distill_steps, batch, cfg.distill_lr)
            distill_assistant(self.backend, cfg.distill_steps, batch, cfg.distill_lr)
        if cfg.init_sim_steps > 0:
            loop = dataclasses.replace(self.config.loop, max_steps=cfg.init_sim_steps)
            logging = dataclasses.replace(self.config.logging, every=max(1, cfg.init_sim_steps // 20))
            sim = preset_at("sim", guidance_scale=cfg.guidance_scale)
            self.train(dataclasses.replace(self.config, objective=sim, loop=loop, logging=logging, output_dir=str(folder / "init_sim")))
        seconds = time.perf_counter() - start
        self.save(folder)
        tilted_draws = self.tilted(cfg.reward_scale, copy=1)[0]
        rows = {
            "init": {**self.evaluate(self.samples()), "train_seconds": seconds},
            "reference": self.evaluate(self.reference_rows),
            "p*": self.evaluate(tilted_draws),
            "tilted_effective_sample_size": [round(v, 1) for v in self.tilted(cfg.reward_scale)[1]],
        }
        (folder / "rows.json").write_text(json.dumps(rows, default=float) + "\n")
        save_tensors({"reference": torch.stack(self.reference_rows), "p*": torch.stack(tilted_draws)}, folder / "samples.safetensors")

    def save(self, folder: Path, modules: Sequence[str] = ("generator", "assistant")) -> None:
        """The networks named in ``modules``, each as ``<name>.safetensors`` in ``folder``."""
        for m in modules:
            save_tensors(getattr(self.backend, m).state_dict(), folder / f"{m}.safetensors")

    def load(self, folder: Path, modules: Sequence[str] = ("generator", "assistant")) -> None:
        """The networks :meth:`save` wrote to ``folder``."""
        for m in modules:
            getattr(self.backend, m).load_state_dict(load_file(str(folder / f"{m}.safetensors"), device=str(self.world.device)))

    def samples(self) -> list[Tensor]:
        """The current generator's samples for every prompt, from the fixed evaluation latents."""
        return [self.backend.sample(z, torch.full((len(z),), c, device=self.world.device)) for c, z in enumerate(self.latents)]

    def tilted(self, reward_scale: float, copy: int = 0) -> tuple[list[Tensor], list[float]]:
        """Exact draws of p* ∝ p_ref exp(α r) per prompt and the pools' effective sample sizes.

        ``copy`` 0 is the target of ``energy_distance_tilted``; copy 1, from an independent pool, is
        what the report's p* row evaluates (its distance to copy 0 is the noise floor).
        """
        if (reward_scale, copy) not in self._tilted:
            g = torch.Generator().manual_seed(self.seed + 2 + copy)
            n, pool, C = self.cfg.eval_samples, self.cfg.tilted_pool, self.world.num_prompts
            draws = [tilted_samples(self.world, self.reward, c, reward_scale, n, pool, g) for c in range(C)]
            self._tilted[reward_scale, copy] = ([d for d, _ in draws], [ess for _, ess in draws])
        return self._tilted[reward_scale, copy]

    def evaluate(self, samples: list[Tensor], reward_scale: float | None = None) -> dict[str, Any]:
        """A report row: the metrics (per-prompt mode masses included), p* at ``reward_scale`` or the demo's α."""
        alpha = self.cfg.reward_scale if reward_scale is None else reward_scale
        tilted = self.tilted(alpha)[0]
        return dataclasses.asdict(evaluate_samples(self.world, self.reward, samples, self.reference, tilted, self.cfg.coverage_threshold))


def train(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Sweep runner: train the run's objective from its seed's start (``starts/seed<seed>`` beside the sweep's
    ``runs``, built by whichever run needs it first); the generator goes to ``generator.safetensors``.
    Metrics: wall seconds and the logged reward curve."""
    demo = GMMDemo(data, folder)  # the start is built by another (its training leaves gradients behind)
    demo.load(build_once(folder.parent.parent / "starts" / f"seed{demo.seed}", GMMDemo(data, folder).build_start))
    start = time.perf_counter()
    demo.train(demo.config)
    seconds = time.perf_counter() - start
    demo.save(folder, ["generator"])
    records = JsonlLog(folder / LOG_FILE).read()
    return {"train_seconds": seconds, "reward_curve": [r.get("generator/reward", math.nan) for r in records]}


def evaluate(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Sweep evaluation: the trained generator's row at the run's α (or the demo's); its samples from the
    fixed latents go to ``samples.safetensors``."""
    demo = GMMDemo(data, folder)
    demo.load(folder, ["generator"])
    samples = demo.samples()
    save_tensors({"generator": torch.stack(samples)}, folder / "samples.safetensors")
    return demo.evaluate(samples, data["objective"].get("reward_scale"))


def grid(cfg: GMMDemoConfig) -> list[dict[str, list[Any]]]:
    """The demo's grid: the method table at the demo's α, the reward-scale sweep and the pseudo-Huber c sweep."""
    method, alpha, c = AXES
    products = [
        {method: cfg.methods},
        {method: cfg.sweep_methods, alpha: cfg.sweep_reward_scales},
        {method: [cfg.huber_c_method], alpha: cfg.huber_c_reward_scales, c: cfg.huber_c_sweep},
    ]
    return [axes for axes in products if all(axes.values())]


def sweep_and_base(cfg: GMMDemoConfig, *, device: str = "cpu", threads: int = 1) -> tuple[SweepConfig, dict[str, Any]]:
    """The demo's sweep and base config (``demo_sweep.yaml``, ``demo.yaml``) with each of ``cfg``'s flat keys
    set at its keys (:data:`KEYS`), its grid, ``device`` and ``threads`` torch threads per worker."""
    sweep, base = packaged_sweep(SWEEP_FILE, BASE_FILE, to_dict(cfg), KEYS, grid=grid(cfg), threads=threads)
    set_key(base, "logging.every", max(1, cfg.steps // 20))
    set_key(base, "gmm.device", device)
    return sweep, base


def run(args: argparse.Namespace) -> int:
    """Entry point of ``distar demo --world gmm`` (flags: see :mod:`distar.commands.demo`)."""
    start, load_start = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    cfg = load_config(GMMDemoConfig, args.config, args.overrides)
    # --seed offsets the config's seed (0 unless a config file or override sets it).
    cfg = dataclasses.replace(cfg, seed=cfg.seed + args.seed, **({} if args.steps is None else {"steps": args.steps}))
    # The gmm networks are small MLPs: one thread per process unless --threads or OMP_NUM_THREADS says otherwise.
    threads = configure_threads(args.threads, parameters=0, device=args.device)
    report_threads(threads, "demo")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    sweep, base = sweep_and_base(cfg, device=args.device, threads=threads)
    runs = run_sweep(sweep, out, base=base)
    results = collect(out)
    keys = sweep.metrics

    def stats(entry: dict[str, Any]) -> dict[str, Any]:
        return summarise([{k: v for k, v in row.items() if k != "reward_curve"} for row in entry["per_seed"]], keys)

    # The grid's points by size: the method table (preset), the α sweep (+ α) and the c sweep (+ α, c).
    table = {p["point"]["objective.preset"]: p for p in results["points"] if len(p["point"]) == 1}
    sweep_rows, huber = (
        [{**{AXES[k]: v for k, v in p["point"].items()}, **stats(p)} for p in results["points"] if len(p["point"]) == size]
        for size in (2, 3)
    )
    starts = [json.loads((out / "starts" / f"seed{cfg.seed + sweep.seed_stride * i}" / "rows.json").read_text()) for i in range(cfg.training_seeds)]
    p_star, huber_c_preset = f"p* (α={cfg.reward_scale:g})", preset(cfg.huber_c_method).huber_c
    models = {
        "reference": summarise([s["reference"] for s in starts], keys),
        p_star: summarise([s["p*"] for s in starts], keys),
        **{m: stats(p) for m, p in table.items()},
        f"init ({cfg.init})": summarise([s["init"] for s in starts], keys),
    }

    start0 = load_file(str(out / "starts" / f"seed{cfg.seed}" / "samples.safetensors"))
    samples = {
        "reference": start0["reference"],
        **{m: load_file(str(out / "runs" / p["folders"][0] / "samples.safetensors"))["generator"] for m, p in table.items()},
        p_star: start0["p*"],
    }
    plot_samples(GMMWorld(cfg.world), samples, out / "samples.png")
    series = {m: [p for p in sweep_rows if p["method"] == m] for m in cfg.sweep_methods}
    for c in cfg.huber_c_sweep:
        if c != huber_c_preset:  # the preset's c is the method's own α sweep line
            series[f"{cfg.huber_c_method} (c = {c:g})"] = [p for p in huber if p["huber_c"] == c]
    plot_pareto(
        series, out / "pareto.png", y=("reward", "mean reward"), reference=models["reference"],
        xs=[("mode_coverage", "mode coverage"), ("mode_entropy", "mode entropy (nats)")],
        title="reward vs diversity across reward scales α, mean ± 95 % interval over seeds (upper right is better)",
    )  # fmt: skip
    plot_training({m: p["per_seed"][0]["reward_curve"] for m, p in table.items()}, out / "training.png")

    report = {
        "world": "gmm",
        "config": to_dict(cfg),
        "models": models,
        "sweep": sweep_rows,
        "huber_c_sweep": huber,
        "tilted_effective_sample_size": [s["tilted_effective_sample_size"] for s in starts],
        "run": {
            "jobs": max(1, min(sweep.jobs, len(trainings(sweep, runs)))), "seed_stride": sweep.seed_stride,
            "load_average_start": load_start, "total_seconds": round(time.perf_counter() - start, 1),
        },
        "environment": environment(),
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    tables = {
        "models": models,
        "sweep": {(p["method"], p["alpha"]): p for p in sweep_rows},
        "huber_c_sweep": {(p["alpha"], p["huber_c"]): p for p in huber},
    }
    write_report(out, results, tables=tables, context={**report, "huber_c_preset": huber_c_preset})
    print(f"report: {(out / 'report.md').resolve()}")
    return 0
