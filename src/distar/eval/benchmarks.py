"""Prompt benchmarks of the paper's tables: PartiPrompts, COCO-2014 captions, the HPSv2 benchmark.

Each loads from its public source when online (cached under :func:`cache_dir`) or from a local
file/folder given as ``path``; :attr:`Benchmark.source` says which was used. Any prompt file
(:mod:`distar.io` formats) is a benchmark too.
"""

from __future__ import annotations

import json
import random
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from distar.config import ConfigError
from distar.io import cache_dir, prompt_column, read_records, read_some
from distar.runstate import write_with

PARTI_URL = "https://raw.githubusercontent.com/google-research/parti/main/PartiPrompts.tsv"
#: COCO-2014 val, one caption per image, 30,000 lines (the GigaGAN/DMD2 zero-shot FID prompt list).
COCO_URL = "https://raw.githubusercontent.com/tianweiy/DMD2/main/main/coco_eval/captions_coco14_test.txt"
COCO_PROMPTS = 30_000
HPS_REPO = "zhwang/HPDv2"
#: HPSv2 benchmark styles (file stems) and the paper's Table 3 column names.
HPS_STYLES = {"anime": "Animation", "concept-art": "Concept Art", "paintings": "Painting", "photo": "Photo"}
#: Columns taken as a prompt's group when a prompt file has one.
GROUP_COLUMNS = ("style", "Style", "category", "Category")


@dataclass(frozen=True)
class PromptItem:
    """One benchmark prompt; ``index`` is its position in the full benchmark (stable across subsets)."""

    index: int
    prompt: str
    group: str | None = None


@dataclass(frozen=True)
class Benchmark:
    """A list of prompts, optionally grouped (HPS styles, Parti categories)."""

    name: str
    items: tuple[PromptItem, ...]
    source: str
    #: What a group is ("style", "category"); None for ungrouped prompt lists.
    group_kind: str | None = None
    #: Display names of the groups, in table order; set for benchmarks reported per group (HPS).
    group_titles: tuple[tuple[str, str], ...] = ()

    def subset(self, n: int | None) -> "Benchmark":
        """The first ``n`` prompts; for per-group benchmarks the first ⌈n / groups⌉ of each group."""
        if n is None or n >= len(self.items):
            return self
        if n < 1:
            raise ConfigError(f"number of prompts must be positive, got {n}")
        if not self.group_titles:
            return replace(self, items=self.items[:n])
        per_group = -(-n // len(self.group_titles))
        taken: dict[str | None, int] = {}
        items = []
        for item in self.items:
            if taken.get(item.group, 0) < per_group:
                taken[item.group] = taken.get(item.group, 0) + 1
                items.append(item)
        return replace(self, items=tuple(items))


def fetch(url: str, name: str) -> Path:
    """``url`` downloaded once into :func:`cache_dir` (atomically) as ``name``; the cached copy after."""
    target = cache_dir() / "downloads" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)

    def download(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, tmp.open("wb") as f:
            shutil.copyfileobj(response, f)

    try:
        write_with(target, download)
    except (urllib.error.URLError, OSError) as err:
        raise ConfigError(f"cannot download {url} ({err}); pass a local copy with --benchmark-path") from None
    return target


def _items(records: list[dict[str, str]], column: str, group_column: str | None) -> tuple[PromptItem, ...]:
    return tuple(
        PromptItem(i, r[column], r.get(group_column) if group_column else None)
        for i, r in enumerate(records)
        if r.get(column, "").strip()
    )


def load_parti(path: str | Path | None = None) -> Benchmark:
    """PartiPrompts (1632 prompts; group = Category, from ``PartiPrompts.tsv`` read with quoting off)."""
    source = Path(path) if path else fetch(PARTI_URL, "PartiPrompts.tsv")
    records = read_records(source)
    return Benchmark("parti", _items(records, "Prompt", "Category"), str(path or PARTI_URL), "category")


def _coco_annotations(path: Path, n: int) -> list[str]:
    """One caption per image from a COCO ``captions_*.json``: the lowest-id caption of each image,
    for ``n`` images drawn with a fixed seed (all images if there are fewer)."""
    data = json.loads(path.read_text())
    first: dict[int, tuple[int, str]] = {}
    for ann in data["annotations"]:
        best = first.get(ann["image_id"])
        if best is None or ann["id"] < best[0]:
            first[ann["image_id"]] = (ann["id"], ann["caption"].strip())
    image_ids = sorted(first)
    if len(image_ids) > n:
        image_ids = sorted(random.Random(0).sample(image_ids, n))
    return [first[i][1] for i in image_ids]


def load_coco(path: str | Path | None = None) -> Benchmark:
    """COCO-2014 val captions for zero-shot FID: a caption list (.txt/.csv/...) or COCO annotations .json."""
    source = Path(path) if path else fetch(COCO_URL, "captions_coco14_test.txt")
    if source.suffix == ".json" and source.is_file() and source.read_text()[:1] == "{":
        records = [{"caption": c} for c in _coco_annotations(source, COCO_PROMPTS)]
    else:
        records = read_records(source)
    column = prompt_column(records)
    return Benchmark("coco", _items(records, column, None), str(path or COCO_URL))


def _hps_file(style: str, root: Path | None) -> Path:
    if root is not None:
        for candidate in (root / f"{style}.json", root / "benchmark" / f"{style}.json"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"HPS benchmark file {style}.json not found in {root} (or {root}/benchmark)")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(HPS_REPO, f"benchmark/{style}.json", repo_type="dataset"))
    except Exception as err:  # offline, hub error: one line, with the local alternative
        raise ConfigError(
            f"cannot fetch {HPS_REPO} benchmark/{style}.json ({err.__class__.__name__}); "
            "pass a folder holding anime.json, concept-art.json, paintings.json, photo.json with --benchmark-path"
        ) from None


def load_hps(path: str | Path | None = None) -> Benchmark:
    """The HPSv2 benchmark: 4 styles × 800 prompts (group = style), Table 3."""
    root = Path(path) if path else None
    items: list[PromptItem] = []
    for style in HPS_STYLES:
        records = read_records(_hps_file(style, root))
        column = prompt_column(records)
        offset = len(items)
        items.extend(PromptItem(offset + i, p.prompt, style) for i, p in enumerate(_items(records, column, None)))
    source = str(root) if root else f"hf://datasets/{HPS_REPO}/benchmark"
    return Benchmark("hps", tuple(items), source, "style", tuple(HPS_STYLES.items()))


def load_prompt_file(path: str | Path) -> Benchmark:
    """Any prompt file of :mod:`distar.io`; a style/category column becomes the group."""
    records = read_some(lambda: read_records(path), path)
    column = prompt_column(records)
    keys = records[0].keys()
    group_column = next((c for c in GROUP_COLUMNS if c in keys), None)
    kind = group_column.lower() if group_column else None
    return Benchmark(Path(path).stem, _items(records, column, group_column), str(path), kind)


BENCHMARKS: dict[str, Callable[[str | Path | None], Benchmark]] = {
    "parti": load_parti,
    "coco": load_coco,
    "hps": load_hps,
}


def load_benchmark(name_or_file: str, path: str | Path | None = None) -> Benchmark:
    """``"parti"``, ``"coco"`` or ``"hps"`` (from ``path`` if given, else the public source), or a prompt file."""
    if name_or_file in BENCHMARKS:
        return BENCHMARKS[name_or_file](path)
    if path is not None:
        raise ConfigError(f"--benchmark-path is for the named benchmarks ({', '.join(BENCHMARKS)}) only")
    if not Path(name_or_file).exists():
        raise FileNotFoundError(f"benchmark '{name_or_file}' is neither {', '.join(BENCHMARKS)} nor a file")
    return load_prompt_file(name_or_file)
