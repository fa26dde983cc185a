"""Benchmark loaders on small local files in the public layouts; no network."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from distar.config import ConfigError
from distar.eval.benchmarks import HPS_STYLES, cache_dir, load_benchmark

PARTI_TSV = (
    "Prompt\tCategory\tChallenge\tNote\n"
    "bond\tAbstract\tBasic\tBiology-inspired concepts with multiple meanings\n"
    '"G I G G L E" painted in thick colorful lettering\tIllustrations\tWriting & Symbols\t\n'
    "a cat on a mat\tAnimals\tBasic\t\n"
)


def test_parti_from_local_file(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text(PARTI_TSV)
    bench = load_benchmark("parti", path)
    assert bench.source == str(path) and bench.group_kind == "category"
    assert [i.prompt for i in bench.items][1] == '"G I G G L E" painted in thick colorful lettering'
    assert [i.group for i in bench.items] == ["Abstract", "Illustrations", "Animals"]
    assert bench.subset(2).items == bench.items[:2]


def test_hps_folder_four_styles_and_balanced_subset(tmp_path):
    for k, style in enumerate(HPS_STYLES):
        (tmp_path / "benchmark").mkdir(exist_ok=True)
        (tmp_path / "benchmark" / f"{style}.json").write_text(json.dumps([f"{style} {i}" for i in range(3 + k)]))
    bench = load_benchmark("hps", tmp_path)
    assert len(bench.items) == 3 + 4 + 5 + 6 and [i.index for i in bench.items] == list(range(18))
    assert [t for _, t in bench.group_titles] == ["Animation", "Concept Art", "Painting", "Photo"]
    small = bench.subset(8)  # two of each style, indices kept
    assert [i.prompt for i in small.items if i.group == "photo"] == ["photo 0", "photo 1"]
    assert [i.index for i in small.items][:3] == [0, 1, 3]
    with pytest.raises(FileNotFoundError, match="photo.json"):
        (tmp_path / "benchmark" / "photo.json").unlink()
        load_benchmark("hps", tmp_path)


def test_coco_from_captions_or_annotations(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("A dog on a sofa.\nTwo birds. \n")
    bench = load_benchmark("coco", captions)
    assert [i.prompt for i in bench.items] == ["A dog on a sofa.", "Two birds. "]
    annotations = {
        "images": [{"id": 7}, {"id": 3}],
        "annotations": [
            {"id": 11, "image_id": 7, "caption": "second caption of 7"},
            {"id": 10, "image_id": 7, "caption": " first caption of 7"},
            {"id": 12, "image_id": 3, "caption": "only caption of 3"},
        ],
    }
    (tmp_path / "captions_val2014.json").write_text(json.dumps(annotations))
    bench = load_benchmark("coco", tmp_path / "captions_val2014.json")
    assert [i.prompt for i in bench.items] == ["only caption of 3", "first caption of 7"]


def test_prompt_file_benchmark_and_errors(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("caption,style\na red cube,photo\na blue cone,anime\n")
    bench = load_benchmark(str(path))
    assert bench.name == "mine" and bench.group_kind == "style" and bench.items[1].group == "anime"
    with pytest.raises(FileNotFoundError, match="neither"):
        load_benchmark(str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match="named benchmarks"):
        load_benchmark(str(path), path)


def test_download_failure_names_the_offline_alternative(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConfigError, match="--benchmark-path"):
        load_benchmark("parti")
    # A cached copy is used without the network.
    cached = cache_dir() / "downloads" / "PartiPrompts.tsv"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(PARTI_TSV)
    assert load_benchmark("parti").source.startswith("https://")
    assert not list(cached.parent.glob("tmp*"))
