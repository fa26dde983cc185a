"""Training configuration: one dataclass per concern, composed into :class:`TrainConfig`.

Load with ``load_config(TrainConfig, "configs/tiny_sd.yaml", ["optim.generator.lr=1e-5"])``; every
field is a dotted ``key=value`` override on the command line, and its ``help`` is its documentation.
Steps are Algorithm 1 iterations (di-star-math.md §7): one step = ``loop.assistant_steps`` assistant
(DSM) updates followed by one generator update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distar.backends.config import ModelConfig
from distar.config import field
from distar.objectives.presets import ObjectiveConfig
from distar.rewards.spec import RewardSpec

#: Sanity bounds: values past them are typos (``1e12``), not runs anyone can finish.
MAX_BATCH_SIZE = 65_536
MAX_STEPS = 10**9
MAX_ASSISTANT_STEPS = 1000
MAX_SEED = 2**32 - 1 - 1024  # process r seeds with seed + r

#: accelerate's tracker names (``accelerate.utils.LoggerType``), for ``logging.report_to``.
TRACKERS = ("tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "aim", "swanlab")

#: Learning-rate schedules of ``diffusers.optimization.get_scheduler`` offered here.
LRSchedule = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
]


@dataclass
class DataConfig:
    """Where prompts come from and how each process draws them."""

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


@dataclass
class OptimizerConfig:
    """AdamW hyper-parameters, LR schedule and gradient clipping for one model."""

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

    @property
    def enabled(self) -> bool:
        return self.decay > 0.0


@dataclass
class LoopConfig:
    """Length of Algorithm 1, its inner assistant loop, and numerics."""

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
    allow_tf32: bool = field(False, help="allow TF32 matmuls and convolutions on Ampere+ GPUs")
    cpu: bool = field(False, help="run on CPU even when a GPU is present")
    threads: int | None = field(
        None, help="torch CPU threads; null = $OMP_NUM_THREADS, else chosen by model size (see docs/training.md)"
    )
    max_bad_steps: int = field(
        5,
        help="stop (exit code 1) after this many consecutive steps with a non-finite loss or gradient "
        "norm; each such update is skipped",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be in [1, {MAX_STEPS:.0e}]")
        if not 1 <= self.assistant_steps <= MAX_ASSISTANT_STEPS:
            raise ValueError(f"assistant_steps must be in [1, {MAX_ASSISTANT_STEPS}]")
        if self.max_bad_steps < 1:
            raise ValueError("max_bad_steps must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1 (or null)")
        if not 1 <= self.gradient_accumulation_steps <= MAX_ASSISTANT_STEPS:
            raise ValueError(f"gradient_accumulation_steps must be in [1, {MAX_ASSISTANT_STEPS}]")


@dataclass
class CheckpointConfig:
    """Where and how often to write ``checkpoint-<step>/`` folders."""

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

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError("every must be >= 0")
        if self.every and not self.seeds:
            raise ValueError("seeds must not be empty when sampling is on")


@dataclass
class TrainConfig:
    """Everything ``distar train`` needs; saved, resolved, as ``<output_dir>/config.yaml``."""

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
    output_dir: str = field("runs/distar", help="run folder: config, logs, samples, checkpoints")
    seed: int = field(0, help="global seed (with loop.global_draws: false, process r uses seed + r for its draws)")

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**32 - 1 - 1024] (one seed per process), got {self.seed}")
