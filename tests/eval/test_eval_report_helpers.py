"""Report helpers on an evaluation folder: per-seed means of per-image scores, labelled image grids."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from distar.eval.report import labelled_grid, per_seed_means


def test_per_seed_means_average_each_seed_of_a_model(tmp_path):
    records = [
        {"seed": 0, "a": 1.0, "b": 4.0}, {"seed": 0, "a": 3.0, "b": None},
        {"seed": 1, "a": 5.0}, {"seed": 1, "a": 7.0, "b": 8.0},
    ]  # fmt: skip
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    means = per_seed_means(tmp_path, ["a", "b", "c"])
    assert means == {"a": [2.0, 6.0], "b": [4.0, 8.0], "c": []}


def test_labelled_grid_has_a_row_per_model(tmp_path):
    rng = np.random.default_rng(0)
    image = lambda: rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # noqa: E731
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    labelled_grid({"a": [image(), image()]}, ["p", "q"], one)
    labelled_grid({"a": [image(), image()], "b": [image(), image()], "c": [image(), image()]}, ["p", "q"], three)
    with Image.open(one) as small, Image.open(three) as tall:
        assert tall.size[0] == small.size[0] and tall.size[1] > small.size[1]
