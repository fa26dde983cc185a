"""``distar demo --world gmm``: every method of Table 2 trained with one budget, measured exactly.

1. Build the world, its reward and a :class:`GMMBackend` (seeded).
2. Initialise the generator and assistant without reward: regression onto the exact reference
   (``init: distill``, :mod:`distar.worlds.gmm.distill`) or random (``init: scratch``), optionally
   followed by SIM (α = 0) steps through the Trainer; every run below starts from this same state.
3. Train each method, and each point of the reward-scale sweep, with :class:`distar.train.Trainer`
   and the same steps, batch and learning rates.
4. Evaluate every model on the same latents against exact reference draws and exact draws of the
   KL-optimal tilted target; write ``report.json``, ``report.md`` and the figures ``samples.png``,
   ``pareto.png`` and ``training.png``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from distar.config import ConfigError, field, load_config, save_config, to_dict
from distar.objectives.presets import PRESETS, ObjectiveConfig, preset
from distar.train import (
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    LoopConfig,
    OptimConfig,
    OptimizerConfig,
    TrainConfig,
    Trainer,
)
from distar.worlds.gmm.backend import GMMBackend
from distar.worlds.gmm.distill import distill_assistant, distill_generator
from distar.worlds.gmm.metrics import SampleMetrics, evaluate_samples, tilted_samples
from distar.worlds.gmm.models import GMMNetConfig
from distar.worlds.gmm.plots import plot_pareto, plot_samples, plot_training
from distar.worlds.gmm.reward import GMMBumpReward
from distar.worlds.gmm.world import GMMWorld, GMMWorldConfig

#: report.json's method keys, in table order (the reference is not trained).
METHODS = ("di_star", "di_star_out", "di_pp", "sim", "diff_instruct")


@dataclass
class GMMDemoConfig:
    """The gmm demo: world, networks, shared training budget, sweep and evaluation sizes."""

    world: GMMWorldConfig = field(GMMWorldConfig(), help="reference mixtures and reward")
    net: GMMNetConfig = field(GMMNetConfig(), help="generator and assistant MLP sizes")
    methods: list[str] = field(list(METHODS), help="objective presets to train and report")
    steps: int = field(1000, help="training steps (generator updates) per method")
    init: Literal["distill", "scratch"] = field(
        "distill",
        help="start: 'distill' = generator fitted to the reference's probability-flow ODE and assistant "
        "fitted to the reference's x0-predictions; 'scratch' = random networks",
    )
    distill_steps: int = field(1500, help="Adam steps of each regression fit (init: distill)")
    distill_lr: float = field(1e-3, help="learning rate of the regression fits (init: distill)")
    init_sim_steps: int = field(0, help="SIM (α = 0) training steps after the init, before any method")
    batch_size: int = field(256, help="samples per update (training and regression fits)")
    assistant_steps: int = field(1, help="assistant (DSM) updates per generator update")
    generator_lr: float = field(3e-4, help="generator AdamW learning rate")
    assistant_lr: float = field(1e-3, help="assistant AdamW learning rate")
    reward_scale: float = field(3.0, help="α of the reward methods (di_star, di_star_out, di_pp) and of p*")
    guidance_scale: float = field(1.0, help="inner CFG scale ω (3.5); 1 = the exact conditional reference")
    cfg_reward_scale: float = field(1.0, help="α_cfg of the implicit CFG reward (di_star_out, 3.6-3.7)")
    sweep_methods: list[str] = field(["di_star", "di_pp"], help="presets swept over reward scales")
    sweep_reward_scales: list[float] = field([0.0, 1.0, 2.0, 3.0, 10.0], help="reward scales α of the sweep")
    eval_samples: int = field(1000, help="evaluation samples per prompt (per model and per target)")
    tilted_pool: int = field(100_000, help="reference draws per prompt resampled into the tilted target")
    coverage_threshold: float = field(0.1, help="mode k counts as covered when its mass is ≥ this × π_k")
    seed: int = field(0, help="seed for network initialisation, training draws and evaluation")
    threads: int = field(1, help="torch CPU threads (these small networks run fastest on one)")

    def __post_init__(self) -> None:
        for name in [*self.methods, *self.sweep_methods]:
            if name not in PRESETS:
                raise ConfigError(f"unknown method {name!r} (choose from {', '.join(PRESETS)})")
        if min(self.steps, self.batch_size, self.eval_samples, self.tilted_pool, self.threads) < 1:
            raise ConfigError("steps, batch_size, eval_samples, tilted_pool and threads must be >= 1")
        if min(self.distill_steps, self.init_sim_steps) < 0:
            raise ConfigError("distill_steps and init_sim_steps must be >= 0")


def method_objective(cfg: GMMDemoConfig, method: str, reward_scale: float | None = None) -> ObjectiveConfig:
    """The preset ``method`` with the demo's α (or ``reward_scale``), inner ω or outer α_cfg."""
    base = PRESETS[method]
    overrides: dict[str, Any] = {}
    if base.get("reward_scale", 0.0) != 0.0:
        overrides["reward_scale"] = cfg.reward_scale if reward_scale is None else reward_scale
    if base.get("cfg_mode", "inner") == "inner":
        overrides["guidance_scale"] = cfg.guidance_scale
    else:
        overrides["cfg_reward_scale"] = cfg.cfg_reward_scale
    return preset(method, **overrides)


class Run(NamedTuple):
    """A trained method: samples per prompt (n, d), wall seconds, batch-mean reward per step."""

    samples: list[Tensor]
    seconds: float
    reward_curve: list[float]


class GMMDemo:
    """Runs of the method family from one shared initial state, and their evaluation."""

    def __init__(self, cfg: GMMDemoConfig, out: Path, device: str = "cpu") -> None:
        self.cfg, self.out, self.device = cfg, out, device
        self.world = GMMWorld(cfg.world, device=device)
        self.reward = GMMBumpReward(self.world).to(device)
        self.backend = GMMBackend(self.world, cfg.net, seed=cfg.seed)
        self._runs: dict[str, Run] = {}
        self._tilted: dict[tuple[float, int], tuple[list[Tensor], list[float]]] = {}
        g = torch.Generator().manual_seed(cfg.seed + 1)
        n, C = cfg.eval_samples, self.world.num_prompts
        self.latents = [self.backend.sample_latents(n, generator=g) for _ in range(C)]
        self.reference = [self.world.sample(c, n, g) for c in range(C)]  # target of energy_distance_ref
        self.reference_rows = [self.world.sample(c, n, g) for c in range(C)]  # the "reference" row
        self.init_state: dict[str, dict[str, Tensor]] = {}

    # -- training ---------------------------------------------------------------------------------
    def train(self, name: str, objective: ObjectiveConfig, steps: int) -> tuple[float, list[dict[str, float]]]:
        """Train the backend in place with the project's Trainer; returns wall seconds and step records."""
        cfg = self.cfg

        def optimizer(lr: float) -> OptimizerConfig:
            return OptimizerConfig(lr=lr, weight_decay=0.0, lr_schedule="constant", max_grad_norm=None)

        # Each prompt repeated so one shuffled pass fills a batch: the same balanced batches as the plain
        # list (every prompt batch_size/C times), without reshuffling C-prompt epochs per sample.
        prompts = self.world.prompts * -(-cfg.batch_size // self.world.num_prompts)
        config = TrainConfig(
            objective=objective,
            data=DataConfig(prompts=prompts, batch_size=cfg.batch_size),
            optim=OptimConfig(generator=optimizer(cfg.generator_lr), assistant=optimizer(cfg.assistant_lr)),
            loop=LoopConfig(max_steps=steps, assistant_steps=cfg.assistant_steps, cpu=self.device == "cpu"),
            checkpointing=CheckpointConfig(save_final=True),
            logging=LoggingConfig(every=max(1, steps // 20), report_to="none"),
            output_dir=str(self.out / "runs" / name),
            seed=cfg.seed,
        )
        tqdm.write(f"gmm demo: training {name} ({steps} steps)")
        start = time.perf_counter()
        records = Trainer(config, self.backend, self.reward, prompts).train()
        return time.perf_counter() - start, records

    def initialise(self) -> float:
        """Step 2: the shared initial generator and assistant; returns wall seconds."""
        cfg, start = self.cfg, time.perf_counter()
        if cfg.init == "distill":
            torch.manual_seed(cfg.seed)
            distill_generator(self.backend, cfg.distill_steps, cfg.batch_size, cfg.distill_lr)
            distill_assistant(self.backend, cfg.distill_steps, cfg.batch_size, cfg.distill_lr)
        if cfg.init_sim_steps > 0:
            self.train("init_sim", method_objective(cfg, "sim"), cfg.init_sim_steps)
        self.init_state = {
            "generator": copy.deepcopy(self.backend.generator.state_dict()),
            "assistant": copy.deepcopy(self.backend.assistant.state_dict()),
        }
        return time.perf_counter() - start

    def run(self, method: str, reward_scale: float | None = None) -> Run:
        """One method trained from the initial state (cached by resolved objective)."""
        objective = method_objective(self.cfg, method, reward_scale)
        key = json.dumps({k: v for k, v in to_dict(objective).items() if k != "preset"}, sort_keys=True)
        if key not in self._runs:
            self.backend.generator.load_state_dict(self.init_state["generator"])
            self.backend.assistant.load_state_dict(self.init_state["assistant"])
            alpha = "" if reward_scale is None else f"_alpha{reward_scale:g}"
            seconds, records = self.train(f"{method}{alpha}", objective, self.cfg.steps)
            curve = [r.get("generator/reward", float("nan")) for r in records]
            self._runs[key] = Run(self.samples(), seconds, curve)
        return self._runs[key]

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def samples(self) -> list[Tensor]:
        """The current generator's samples for every prompt, from the fixed evaluation latents."""
        self.backend.generator.eval()
        out = []
        for c, z in enumerate(self.latents):
            cond = torch.full((len(z),), c, dtype=torch.long, device=self.world.device)
            out.append(self.backend.generate(z, cond).detach())
        self.backend.generator.train()
        return out

    def tilted(self, reward_scale: float, copy: int = 0) -> tuple[list[Tensor], list[float]]:
        """Exact draws of p* ∝ p_ref exp(α r) per prompt and the pools' effective sample sizes.

        ``copy`` 0 is the target of ``energy_distance_tilted``; copy 1, from an independent pool, is
        what the report's p* row evaluates (its distance to copy 0 is the noise floor).
        """
        key = (reward_scale, copy)
        if key not in self._tilted:
            g = torch.Generator().manual_seed(self.cfg.seed + 2 + copy)
            n, pool = self.cfg.eval_samples, self.cfg.tilted_pool
            draws = [
                tilted_samples(self.world, self.reward, c, reward_scale, n, pool, g)
                for c in range(self.world.num_prompts)
            ]
            self._tilted[key] = ([d for d, _ in draws], [ess for _, ess in draws])
        return self._tilted[key]

    def evaluate(self, samples: list[Tensor], reward_scale: float | None = None) -> SampleMetrics:
        alpha = self.cfg.reward_scale if reward_scale is None else reward_scale
        return evaluate_samples(
            self.world, self.reward, samples, self.reference, self.tilted(alpha)[0], self.cfg.coverage_threshold
        )


#: report columns of every evaluated model
COLUMNS = (
    "reward",
    "mode_coverage",
    "mode_entropy",
    "off_mode_mass",
    "energy_distance_ref",
    "energy_distance_tilted",
)


def _row(m: SampleMetrics, **extra: Any) -> dict[str, Any]:
    """A report row: the metrics, per-prompt mode masses included, plus ``extra``."""
    return {**dataclasses.asdict(m), **extra}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table; numbers with 4 significant digits, None as a dash."""

    def cell(v: Any) -> str:
        return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def _markdown(report: dict[str, Any]) -> str:
    """report.md: settings, the method table, the sweep, the figures and what to look at."""
    cfg, world, env = report["config"], report["config"]["world"], report["environment"]
    cols = [*COLUMNS, "train_seconds"]
    init = report["init"]
    rows = [[name, *(row[c] for c in cols)] for name, row in report["methods"].items()]
    tilted = report["tilted_target"]
    rows.insert(1, [f"p* (α={tilted['alpha']:g})", *(tilted[c] for c in COLUMNS), None])
    rows.append([f"init ({init['kind']})", *(init[c] for c in COLUMNS), init["seconds"]])
    sweep = [[p["method"], p["alpha"], *(p[c] for c in COLUMNS)] for p in report["sweep"]]
    lines = [
        "# distar demo: gmm world",
        "",
        f"{world['num_prompts']} prompts in d = {world['dim']}, each a mixture with mode weights "
        f"{world['mode_weights']}; reward: a bump of width {world['reward_width']} on each prompt's mode "
        f"#{world['reward_mode']}. Every method trains {cfg['steps']} steps at batch {cfg['batch_size']} from the "
        f"same '{init['kind']}' initialisation (last row). α = {cfg['reward_scale']:g}, inner ω = "
        f"{cfg['guidance_scale']:g}, outer α_cfg = {cfg['cfg_reward_scale']:g}; energy_distance_tilted is to "
        f"p* ∝ p_ref exp(α r) at α = {cfg['reward_scale']:g}. Seed {cfg['seed']}.",
        "",
        *_table(["method", *cols], rows),
        "",
        "The reference and p* rows are independent exact draws of the reference and of the KL-optimal tilted",
        f"target: their distances to their own kind are the noise floor at {cfg['eval_samples']} samples per prompt.",
        "Mode masses per prompt are in report.json.",
        "",
        "## Reward-scale sweep (energy_distance_tilted: to p* at the row's own α)",
        "",
        *_table(["method", "α", *COLUMNS], sweep),
        "",
        "![samples](samples.png)",
        "",
        "![pareto](pareto.png)",
        "",
        "![training](training.png)",
        "",
        "## What to look at",
        "",
        "- `mode_coverage`, `mode_entropy`: the diversity kept; the reference row is the target.",
        "- `off_mode_mass`: samples on no reference mode (bridges between modes, strays): not realistic.",
        "- `reward` beside them: reward gained by dropping modes is collapse.",
        "- `energy_distance_tilted`: closeness to the KL-regularised optimum p*. DI++ minimises an integral KL,",
        "  DI* a score divergence: their optima need not coincide.",
        "- pareto.png: at equal reward, the curve further right kept more modes.",
        "- training.png: whether the budget reached a plateau; a curve still climbing is not converged.",
        "",
        f"Run: {env['total_seconds']:.0f} s in total, {env['torch_threads']} torch thread(s), load average "
        f"{env['load_average_start']} at start and {env['load_average_end']} at the end.",
    ]
    return "\n".join(lines) + "\n"


def _load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run(args: argparse.Namespace) -> int:
    """Entry point of ``distar demo --world gmm`` (flags: see :mod:`distar.commands.demo`)."""
    start, load_start = time.perf_counter(), _load_average()
    cfg = load_config(GMMDemoConfig, args.config, args.overrides)
    # --seed offsets the config's seed (0 unless a config file or override sets it).
    cfg = dataclasses.replace(cfg, seed=cfg.seed + args.seed, **({} if args.steps is None else {"steps": args.steps}))
    torch.set_num_threads(cfg.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    demo = GMMDemo(cfg, out, device=args.device)
    init_seconds = demo.initialise()
    init = _row(demo.evaluate(demo.samples()), kind=cfg.init, seconds=round(init_seconds, 2))

    samples: dict[str, list[Tensor]] = {"reference": demo.reference_rows}
    methods = {"reference": _row(demo.evaluate(demo.reference_rows), train_seconds=None)}
    tilted_draws = demo.tilted(cfg.reward_scale, copy=1)[0]
    tilted = _row(demo.evaluate(tilted_draws), alpha=cfg.reward_scale)
    curves: dict[str, list[float]] = {}
    for method in cfg.methods:
        trained = demo.run(method)
        samples[method], curves[method] = trained.samples, trained.reward_curve
        methods[method] = _row(demo.evaluate(trained.samples), train_seconds=round(trained.seconds, 2))

    sweep = [
        {"method": method, "alpha": alpha, **demo.evaluate(demo.run(method, alpha).samples, alpha).scalars()}
        for method in cfg.sweep_methods
        for alpha in cfg.sweep_reward_scales
    ]

    samples[f"p* (α={cfg.reward_scale:g})"] = tilted_draws
    plot_samples(demo.world, samples, out / "samples.png")
    plot_pareto(sweep, methods["reference"], out / "pareto.png")
    plot_training(curves, out / "training.png")

    report = {
        "world": "gmm",
        "config": to_dict(cfg),
        "init": init,
        "methods": methods,
        "tilted_target": tilted,
        "sweep": sweep,
        "tilted_effective_sample_size": [round(v, 1) for v in demo.tilted(cfg.reward_scale)[1]],
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "load_average_start": load_start,
            "load_average_end": _load_average(),
            "total_seconds": round(time.perf_counter() - start, 1),
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    print(f"wrote {out / 'report.md'}")
    return 0
