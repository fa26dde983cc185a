"""``EvalConfig``: everything ``distar eval`` does, as one typed config (YAML or command line);
:func:`distar.eval.suite.run_eval` runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from distar.config import ConfigError, field
from distar.inference.spec import ModelSpec
from distar.runtime import check_seed


@dataclass
class EvalConfig:
    """An evaluation run: models × benchmark × metrics, written to ``out_dir``."""

    models: list[ModelSpec] = field([], help="models to evaluate (rows of the tables)")
    benchmark: str = field("parti", help="parti, coco, hps, or a prompt file (.txt/.csv/.tsv/.jsonl/.json)")
    benchmark_path: str | None = field(
        None, help="local copy of a named benchmark (PartiPrompts.tsv, COCO captions file, HPS folder)"
    )
    metrics: list[str] = field(
        ["imagereward", "aesthetic", "pickscore", "clip"],
        help="imagereward, aesthetic, pickscore, clip, hpsv2, hpsv2.1, fid, diversity, prompt_diversity, "
        "or a reward plugin (module:Class or an installed entry point)",
    )
    metric_paths: dict[str, str] = field(
        {}, help="metric → model location (hub id, folder, file; 'tiny' = tiny random reward model)"
    )
    metric_options: dict[str, dict[str, Any]] = field(
        {}, help="reward plugin metric → keyword arguments of its class (docs/rewards-own.md)"
    )
    out_dir: str = field("eval", help="results folder (re-running with it resumes)")
    num_images: int | None = field(
        None, help="number of prompts used (default all); each is generated once per seed"
    )
    seeds: list[int] = field([0], help="seeds; every prompt is generated once per seed")
    batch_size: int = field(4, help="images per generation / scoring batch")
    device: str | None = field(None, help="device for models and metrics (default cuda if available)")
    metric_dtype: Literal["float32", "bfloat16", "float16"] = field("float32", help="dtype of the metric models")
    timing_images: int = field(10, help="images timed per model for the cost columns (0: no timing)")
    grid_prompts: int = field(8, help="prompts shown in the sample grids")
    fid_reference: str | None = field(
        None, help="FID reference: image folder (e.g. COCO-2014 val2014) or cached statistics .safetensors"
    )
    fid_resolution: int | None = field(512, help="side both image sets are resized to before FID (null: none)")
    local_files_only: bool = field(False, help="never download metric models; use local files and caches")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if not self.seeds:
            raise ConfigError("seeds: at least one seed is needed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: duplicates in {self.seeds}")
        for seed in self.seeds:
            check_seed(seed, "seeds")
        if self.timing_images < 0:
            raise ConfigError(f"timing_images must be ≥ 0, got {self.timing_images}")
