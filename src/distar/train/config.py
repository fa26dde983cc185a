"""Training configuration: one dataclass per concern, composed into :class:`TrainConfig`.

Load with ``load_config(TrainConfig, "configs/tiny_sd.yaml", ["optim.generator.lr=1e-5"])``; every
field is a dotted ``key=value`` override on the command line, and its ``help`` is its documentation.
Steps are Algorithm 1 iterations (docs/math.md §7): one step = ``loop.assistant_steps`` assistant
(DSM) updates followed by one generator update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Mapping

from distar.backends.config import ModelConfig
from distar.config import field
from distar.objectives.presets import ObjectiveConfig
from distar.rewards.spec import RewardSpec
from distar.train.preemption import STOP_SIGNALS, signal_number

#: Sanity bounds: values past them are typos (``1e12``), not runs anyone can finish.
MAX_BATCH_SIZE = 65_536
MAX_STEPS = 10**9
MAX_ASSISTANT_STEPS = 1000
MAX_ACCUMULATION_STEPS = 1000
MAX_SEED = 2**32 - 1 - 1024  # process r seeds with seed + r
MAX_SAMPLE_SEED = 2**63 - 1  # torch.Generator.manual_seed's range
MAX_THREADS = 1024
MAX_PROMPT_CHARS = 10_000  # as in prompt files (distar.io)
POLYNOMIAL_LR_END = 1e-7  # diffusers' polynomial schedule decays to this

#: accelerate's tracker names (``accelerate.utils.LoggerType``), for ``logging.report_to``.
TRACKERS = ("tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "aim", "swanlab")

#: Learning-rate schedules of ``diffusers.optimization.get_scheduler`` offered here.
LRSchedule = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
]


@dataclass
class DataConfig:
    """Where prompts come from and how each process draws them."""

    foreign_keys: ClassVar[Mapping[str, tuple[str, ...]]] = {"train_batch_size": ("batch_size",)}

    source: str | None = field(
        None,
        help="prompt source: .txt (one per line), .csv/.tsv/.jsonl/.json/.parquet file, a datasets "
        "save_to_disk folder, or a datasets hub id",
    )
    column: str | None = field(
        None, help="prompt column of a table/JSONL/parquet/datasets source (default: prompt, caption, text, TEXT)"
    )
    split: str = field("train", help="split of a datasets folder or hub source")
    name: str | None = field(None, help="configuration name of a datasets hub source")
    streaming: bool = field(False, help="stream a hub source's prompt column instead of downloading the dataset")
    prompts: list[str] = field([], help="inline prompts, used when `source` is not set")
    batch_size: int = field(1, help="prompts per process for each assistant and each generator update")
    shuffle: bool = field(True, help="reshuffle every epoch with seed + epoch (same order on every process)")

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be in [1, {MAX_BATCH_SIZE}]")
        if long := [i for i, p in enumerate(self.prompts) if len(p) > MAX_PROMPT_CHARS]:
            size = len(self.prompts[long[0]])
            raise ValueError(f"prompts: prompt {long[0]} has {size} characters, at most {MAX_PROMPT_CHARS}")


@dataclass
class OptimizerConfig:
    """AdamW hyper-parameters, LR schedule and gradient clipping for one model."""

    foreign_keys: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "learning_rate": ("lr",), "lr_scheduler": ("lr_schedule",), "lr_warmup_steps": ("warmup_steps",),
        "adam_weight_decay": ("weight_decay",), "adam_epsilon": ("eps",),
    }

    lr: float = field(5e-7, help="peak learning rate")
    betas: list[float] = field([0.9, 0.999], help="AdamW (β1, β2)")
    weight_decay: float = field(0.01, help="AdamW decoupled weight decay")
    eps: float = field(1e-8, help="AdamW ε")
    lr_schedule: LRSchedule = field("constant_with_warmup", help="learning-rate schedule (diffusers get_scheduler)")
    warmup_steps: int = field(0, help="linear LR warm-up length, in training steps")
    max_grad_norm: float | None = field(10.0, help="clip the gradient norm to this value; null = no clipping")

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be > 0 (or null for no clipping)")


@dataclass
class OptimConfig:
    """Separate optimisers for the generator g_θ and the assistant s_ψ (two-time-scale updates)."""

    generator: OptimizerConfig = field(OptimizerConfig(), help="generator optimiser")
    assistant: OptimizerConfig = field(OptimizerConfig(), help="assistant optimiser")
    use_8bit_adam: bool = field(False, help="bitsandbytes AdamW8bit instead of torch AdamW (needs distar[bnb])")


@dataclass
class EMAConfig:
    """Exponential moving average of the generator's trainable parameters (diffusers EMAModel)."""

    decay: float = field(0.0, help="EMA decay; 0 turns EMA off")
    update_after_step: int = field(0, help="start averaging after this many training steps")
    warmup: bool = field(
        False,
        help="ramp the decay as 1 − (1 + n/inv_gamma)^(−power); when false the ramp is (1 + n)/(10 + n); "
        "both are capped at `decay`",
    )
    inv_gamma: float = field(1.0, help="warm-up inverse gamma")
    power: float = field(2.0 / 3.0, help="warm-up power")

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError("decay must be in [0, 1)")
        if self.update_after_step < 0:
            raise ValueError(f"update_after_step must be >= 0, got {self.update_after_step}")
        if not (0 < self.inv_gamma < math.inf and 0 < self.power < math.inf):
            raise ValueError(f"inv_gamma and power must be finite and > 0, got {self.inv_gamma} and {self.power}")

    @property
    def enabled(self) -> bool:
        return self.decay > 0.0


@dataclass
class LoopConfig:
    """Length of Algorithm 1, its inner assistant loop, and numerics."""

    foreign_keys: ClassVar[Mapping[str, tuple[str, ...]]] = {"max_train_steps": ("max_steps",)}

    max_steps: int = field(1000, help="training steps (generator updates)")
    assistant_steps: int = field(1, help="assistant (DSM) updates per generator update (DMD2: 5)")
    gradient_accumulation_steps: int = field(
        1, help="micro-batches of data.batch_size per update (same gradient as one batch that many times larger)"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        None, help="accelerate autocast mode; null = what `accelerate config` / `accelerate launch` set (else no)"
    )
    global_draws: bool = field(
        True,
        help="every process draws the noise and times of the whole global batch from one shared seed and keeps "
        "its slice, so N processes at data.batch_size b train as one process at N·b; false: each process "
        "draws its own from seed + rank",
    )
    fsdp: bool = field(
        False,
        help="shard the generator and the assistant over the processes with FSDP2 (per block, then the root; "
        "see docs/training.md); no effect with one process",
    )
    allow_tf32: bool = field(False, help="allow TF32 matmuls and convolutions on Ampere+ GPUs")
    cpu: bool = field(False, help="run on CPU even when a GPU is present")
    plan_memory: bool = field(
        True,
        help="on a GPU, estimate the peak memory of an iteration before the first step (as distar plan does, "
        "in a CPU process of its own) and warn when it will not fit; false skips it",
    )
    threads: int | None = field(
        None, help="torch CPU threads; null = $OMP_NUM_THREADS, else chosen by model size (see docs/training.md)"
    )
    max_bad_steps: int = field(
        5,
        help="stop (exit code 1) after this many consecutive steps with a non-finite loss or gradient "
        "norm; each such update is skipped",
    )
    stop_signals: list[str] = field(
        list(STOP_SIGNALS),
        help="signals that make the run finish its step, save a checkpoint and exit 75; a second one stops "
        "at once without saving (see docs/training.md, Preemption)",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be in [1, {MAX_STEPS:.0e}]")
        if not 1 <= self.assistant_steps <= MAX_ASSISTANT_STEPS:
            raise ValueError(f"assistant_steps must be in [1, {MAX_ASSISTANT_STEPS}]")
        if self.max_bad_steps < 1:
            raise ValueError("max_bad_steps must be >= 1")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be in [1, {MAX_THREADS}] (or null)")
        if not 1 <= self.gradient_accumulation_steps <= MAX_ACCUMULATION_STEPS:
            raise ValueError(f"gradient_accumulation_steps must be in [1, {MAX_ACCUMULATION_STEPS}]")
        for name in self.stop_signals:
            signal_number(name)


@dataclass
class CheckpointConfig:
    """Where and how often to write ``checkpoint-<step>/`` folders."""

    foreign_keys: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "checkpointing_steps": ("every",), "save_steps": ("every",), "checkpoints_total_limit": ("total_limit",),
        "save_total_limit": ("total_limit",), "resume_from_checkpoint": ("--resume (of distar train)",),
    }

    every: int = field(0, help="save every this many steps; 0 = only at the end")
    total_limit: int | None = field(None, help="keep at most this many checkpoints (oldest removed); null = all")
    save_final: bool = field(True, help="save a checkpoint after the last step")

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError("every must be >= 0")
        if self.total_limit is not None and self.total_limit < 1:
            raise ValueError("total_limit must be >= 1 (or null)")


@dataclass
class LoggingConfig:
    """Per-step records (JSONL, always), accelerate trackers and the progress bar."""

    every: int = field(10, help="flush records and log window means every this many steps")
    report_to: str = field(
        "none",
        help="accelerate trackers, comma-separated: " + ", ".join(TRACKERS) + "; 'all' = every installed one, "
        "'none' = only log.jsonl (tensorboard writes to <output_dir>/tensorboard)",
    )
    project: str = field("distar", help="tracker project name (accelerate init_trackers)")
    progress_bar: bool = field(True, help="show a tqdm bar with losses and ETA")

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("every must be >= 1")
        if not self.project.strip() or self.project in (".", "..") or any(c in self.project for c in "/\\\0"):
            raise ValueError(f"project: {self.project[:40]!r} must be a plain name (it names a folder inside the run folder)")
        for name in self.report_to.split(","):
            if name.strip() not in (*TRACKERS, "all", "none"):
                raise ValueError(f"report_to: unknown tracker {name.strip()!r} (choose from {', '.join(TRACKERS)}, all, none)")

    @property
    def trackers(self) -> list[str]:
        """The tracker names for ``Accelerator(log_with=...)`` (empty for 'none')."""
        return [n for n in (name.strip() for name in self.report_to.split(",")) if n != "none"]


@dataclass
class SamplingConfig:
    """Periodic sample grids with fixed prompts and seeds (image backends only)."""

    every: int = field(0, help="write a grid every this many steps (and at step 0); 0 = off")
    prompts: list[str] = field([], help="grid rows (default: the first 4 training prompts)")
    seeds: list[int] = field([0, 1], help="grid columns: one latent seed each")
    use_ema: bool = field(True, help="also write a grid with the EMA weights when EMA is on")
    batch_size: int = field(16, help="images per forward pass of the generator making a grid")

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError("every must be >= 0")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be in [1, {MAX_BATCH_SIZE}]")
        if self.every and not self.seeds:
            raise ValueError("seeds must not be empty when sampling is on")
        if bad := [s for s in self.seeds if not 0 <= s <= MAX_SAMPLE_SEED]:
            raise ValueError(f"seeds must be in [0, 2**63 - 1], got {str(bad[0])[:30]}")


#: What the monitor's alarm and guarded selection can watch (docs/monitor.md).
MONITOR_WATCH = ("judges", "diversity", "drift", "metrics")


@dataclass
class MonitorConfig:
    """Held-out judges, diversity and drift during training, a reward-hacking alarm and the best checkpoint."""

    every: int | None = field(
        None,
        help="monitor every this many steps and at step 0; null = loop.max_steps / 10; 0 = off (it is also off, "
        "saying why, when the samples are not images or `prompts` cannot be set aside)",
    )
    prompts: int | str = field(
        16,
        help="held-out prompts: a prompt file, or this many distinct prompts set aside from the training "
        "prompts (never trained on; needs 4 training prompts per held-out one)",
    )
    seeds: list[int] = field([0, 1], help="seeds of the held-out images (≥ 2 for diversity across seeds)")
    judges: list[RewardSpec] = field(
        [], help="reward models that are not trained on, scored on the held-out images (e.g. hpsv2.1, imagereward, clip)"
    )
    metrics: list[RewardSpec] = field(
        [], help="further per-image metrics, recorded but never selected on unless watched (a world's ground truth)"
    )
    watch: list[str] = field(
        ["judges", "diversity"],
        help="what the alarm and the guarded selection watch: " + ", ".join(MONITOR_WATCH),
    )
    z: float = field(3.0, help="significance: a change is significant past this many standard errors over prompts")
    patience: int = field(1, help="monitored steps in a row the alarm condition must hold before it fires")
    select: str = field(
        "guarded",
        help="best checkpoint rule: guarded = highest training reward with no watched figure significantly "
        "worse than at step 0; a judge's name = its highest mean; none = no best checkpoint",
    )
    stop: bool = field(False, help="on the alarm, save a checkpoint and stop the run (exit status 3)")
    use_ema: bool = field(True, help="also monitor the EMA weights when EMA is on (the selection then judges them)")
    drift_steps: int = field(20, help="steps of the reference's own sampler for the drift (DDIM); 0 = no drift")
    drift_guidance: float | None = field(
        None, help="CFG ω of the reference's drift images; null = objective.guidance_scale"
    )
    reference_images: str | None = field(
        None, help="cache file of the reference's drift images (default: <output_dir>/monitor/reference.safetensors)"
    )
    batch_size: int = field(16, help="images per forward pass of the monitor's generator and scorers")
    grid: int = field(4, help="held-out prompts shown in monitor_grid.png")

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 0:
            raise ValueError("every must be >= 0 (0 = off)")
        if isinstance(self.prompts, int) and not 1 <= self.prompts <= 10_000:
            raise ValueError("prompts must be a prompt file or a count in [1, 10000]")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct and not empty")
        if not all(0 <= s <= MAX_SEED for s in self.seeds):
            raise ValueError(f"seeds must be in [0, {MAX_SEED}]")
        unknown = [w for w in self.watch if w not in MONITOR_WATCH]
        if unknown:
            raise ValueError(f"watch: unknown {unknown[0]!r} (choose from {', '.join(MONITOR_WATCH)})")
        if not self.z > 0 or self.patience < 1 or self.batch_size < 1 or self.grid < 1 or self.drift_steps < 0:
            raise ValueError("z must be > 0, patience, batch_size and grid >= 1, drift_steps >= 0")
        judges = [j.name for j in self.judges]
        if self.select not in ("guarded", "none", *judges):
            raise ValueError(f"select: {self.select!r} is not guarded, none or a judge ({', '.join(judges) or 'none given'})")

    def interval(self, max_steps: int) -> int:
        """Steps between monitored steps (0 = off)."""
        return max(1, max_steps // 10) if self.every is None else self.every


@dataclass
class TrainConfig:
    """Everything ``distar train`` needs; saved, resolved, as ``<output_dir>/config.yaml``."""

    #: diffusers' and TRL's training-script names → distar's keys (shown by the unknown-key error).
    foreign_keys: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "learning_rate": ("optim.generator.lr", "optim.assistant.lr"),
        "max_train_steps": ("loop.max_steps",), "max_steps": ("loop.max_steps",),
        "train_batch_size": ("data.batch_size",), "per_device_train_batch_size": ("data.batch_size",),
        "gradient_accumulation_steps": ("loop.gradient_accumulation_steps",),
        "mixed_precision": ("loop.mixed_precision",),
        "checkpointing_steps": ("checkpointing.every",), "save_steps": ("checkpointing.every",),
        "checkpoints_total_limit": ("checkpointing.total_limit",),
        "resume_from_checkpoint": ("--resume (of distar train)",),
        "report_to": ("logging.report_to",), "logging_steps": ("logging.every",),
    }

    model: ModelConfig | None = field(None, help="diffusers backend (null when a Backend is passed in directly)")
    rewards: list[RewardSpec] = field([], help="explicit reward terms r = Σ w_k r_k of Eq. (3.1)")
    objective: ObjectiveConfig = field(ObjectiveConfig(), help="divergence, reward scale α and CFG (Table 2)")
    data: DataConfig = field(DataConfig(), help="prompts")
    optim: OptimConfig = field(OptimConfig(), help="optimisers")
    ema: EMAConfig = field(EMAConfig(), help="generator EMA")
    loop: LoopConfig = field(LoopConfig(), help="loop length and numerics")
    checkpointing: CheckpointConfig = field(CheckpointConfig(), help="checkpoints")
    logging: LoggingConfig = field(LoggingConfig(), help="logging")
    sampling: SamplingConfig = field(SamplingConfig(), help="sample grids")
    monitor: MonitorConfig = field(MonitorConfig(), help="held-out monitor, reward-hacking alarm, best checkpoint")
    output_dir: str = field("runs/distar", help="run folder: config, logs, samples, checkpoints")
    seed: int = field(0, help="global seed (with loop.global_draws: false, process r uses seed + r for its draws)")

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**32 - 1 - 1024] (one seed per process), got {str(self.seed)[:30]}")
        for name, opt in (("generator", self.optim.generator), ("assistant", self.optim.assistant)):
            if opt.lr_schedule != "polynomial":
                continue
            if opt.warmup_steps >= self.loop.max_steps:
                raise ValueError(
                    f"optim.{name}: the polynomial schedule needs warmup_steps < loop.max_steps = {self.loop.max_steps}"
                )
            if opt.lr <= POLYNOMIAL_LR_END:
                raise ValueError(f"optim.{name}: the polynomial schedule decays to {POLYNOMIAL_LR_END:g}; lr must be larger")
