"""Evaluation results: the :class:`Summary` and its paper-style tables and sample grids.

``summary.md`` holds Table 1 (rows = models; ImageReward, Aes, PickScore, CLIP, HPS, FID, diversity,
seconds per 10 images, peak memory) and, for benchmarks reported per group (HPS), Table 3 per metric
(Animation, Concept Art, Painting, Photo, Average), on the paper's scales (see :data:`COLUMNS`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

#: metric → (column title, decimals). The reward models return the paper's scales already
#: (PickScore: cosine ≈ 0.23; CLIP and HPS: 100·cosine), so values are printed as they are.
COLUMNS: dict[str, tuple[str, int]] = {
    "imagereward": ("ImageReward", 3),
    "aesthetic": ("Aes", 2),
    "pickscore": ("PickScore", 4),
    "clip": ("CLIP", 2),
    "hpsv2": ("HPSv2", 2),
    "hpsv2.1": ("HPSv2.1", 2),
    "fid": ("FID", 2),
    "diversity": ("Diversity", 4),
    "prompt_diversity": ("Prompt diversity", 4),
}


_MEMORY_KINDS = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated while generating",
    "process_peak_rss": "peak resident memory of the process while generating (CPU)",
}


@dataclass
class ModelResult:
    """One row: a model's mean scores, per-group means, set metrics, cost and problems."""

    name: str
    images: int
    scores: dict[str, float | None] = field(default_factory=dict)
    groups: dict[str, dict[str, float | None]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass
class Summary:
    """All results of one ``evaluate`` run."""

    benchmark: str
    source: str
    prompts: int
    seeds: list[int]
    metrics: list[str]
    models: list[ModelResult]
    group_kind: str | None = None
    group_titles: list[tuple[str, str]] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: str | Path) -> None:
        """``summary.json`` and ``summary.md`` in ``out_dir``."""
        out = Path(out_dir)
        (out / "summary.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / "summary.md").write_text(self.to_markdown())

    def to_markdown(self) -> str:
        lines = [
            f"# Evaluation: {self.benchmark}",
            "",
            f"- prompts: {self.prompts} from `{self.source}`; seeds: {', '.join(map(str, self.seeds))}",
            f"- environment: {', '.join(f'{k} {v}' for k, v in self.environment.items())}",
            "",
            "## Table 1",
            "",
            *_table1(self),
        ]
        for metric in self.metrics:
            if self.group_titles and any(metric in g for m in self.models for g in m.groups.values()):
                lines += ["", f"## Table 3: {COLUMNS[metric][0]} by {self.group_kind}", "", *_table3(self, metric)]
        lines += ["", "## Notes", "", *_notes(self)]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{COLUMNS[metric][1]}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _table1(summary: Summary) -> list[str]:
    metrics = [m for m in COLUMNS if m in summary.metrics]
    header = ["Model", "Steps", *(COLUMNS[m][0] for m in metrics), "s / 10 images", "Peak memory (GiB)"]
    rows = []
    for model in summary.models:
        cost = model.cost or {}
        rows.append(
            [
                model.name,
                str(model.sampling.get("num_inference_steps", "–")),
                *(_fmt(model.scores.get(m), m) for m in metrics),
                f"{cost['seconds_per_10_images']:.3f}" if cost else "–",
                f"{cost['peak_memory_gib']:.2f}" if cost else "–",
            ]
        )
    return _table(header, rows)


def _table3(summary: Summary, metric: str) -> list[str]:
    header = ["Model", *(title for _, title in summary.group_titles), "Average"]
    rows = [
        [
            model.name,
            *(_fmt(model.groups.get(group, {}).get(metric), metric) for group, _ in summary.group_titles),
            _fmt(model.scores.get(metric), metric),
        ]
        for model in summary.models
    ]
    return _table(header, rows)


def _notes(summary: Summary) -> list[str]:
    notes = [
        "- Scores are means over all images, on the paper's scales: PickScore is the cosine, CLIP and HPS "
        "are 100·cosine, ImageReward and Aes are the models' raw outputs; Diversity is the mean pairwise "
        "CLIP cosine distance between seeds of one prompt. Images are scored from their PNG files; "
        "CLIP-type models get them PIL-bicubic-resized and centre-cropped (the reference evaluation path).",
        "- s / 10 images: 10 × the median over timed batches of seconds per image, after one warm-up "
        "batch (cost.json: batch size, plain mean). Peak memory: "
        + ", ".join(sorted({_MEMORY_KINDS.get((m.cost or {}).get("memory_kind"), "not measured") for m in summary.models}))
        + ".",
    ]
    if "fid" in summary.metrics:
        counts = {m.name: (m.extras.get("fid_images"), m.extras.get("fid_reference_images")) for m in summary.models}
        notes.append(
            "- FID: "
            + "; ".join(f"{name} {g} generated vs {r} reference images" for name, (g, r) in counts.items())
            + ". Comparable only under the same protocol (extractor, resizing, reference set, count)."
        )
    for model in summary.models:
        if model.failures:
            notes.append(f"- {model.name}: {len(model.failures)} problem(s): " + "; ".join(model.failures[:10]))
    return notes


def save_grid(rows: Sequence[Sequence[Path | None]], path: Path, cell: int = 256) -> None:
    """Tile images (rows × columns; None = blank) into one PNG, each resized to ``cell``² at most."""
    columns = max((len(r) for r in rows), default=0)
    if not rows or columns == 0:
        return
    sizes = []
    for row in rows:
        for image_path in row:
            if image_path is not None:
                with Image.open(image_path) as image:
                    sizes.append(min(image.size))
    side = min([cell, *sizes])
    grid = Image.new("RGB", (side * columns, side * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image_path in enumerate(row):
            if image_path is not None:
                with Image.open(image_path) as image:
                    grid.paste(image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS), (c * side, r * side))
    grid.save(path)


def labelled_grid(rows: Mapping[str, Sequence[np.ndarray]], titles: Sequence[str], path: Path) -> None:
    """One row per model (its name on the left), one column per title; small images drawn with nearest
    interpolation (pixels stay visible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.2 * n_cols + 1.2, 1.25 * n_rows + 0.4), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=5.5)
            if c == 0:
                ax.set_ylabel(name, fontsize=6.5, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def per_seed_means(model_dir: Path, keys: Sequence[str]) -> dict[str, list[float]]:
    """Per evaluation seed, the mean of each per-image score in ``model_dir/scores.jsonl`` (a model's
    folder of :func:`distar.eval.evaluate`): the replicates of a fixed model."""
    by_seed: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in (model_dir / "scores.jsonl").read_text().splitlines():
        record = json.loads(line)
        for k in keys:
            if record.get(k) is not None:
                by_seed[record["seed"]][k].append(record[k])
    return {k: [float(np.mean(v[k])) for v in by_seed.values() if v[k]] for k in keys}
