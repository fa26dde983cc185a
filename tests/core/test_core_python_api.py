"""The Python API of docs/python.md: examples/train_in_python.py runs end to end (train, resume in
another precision, export, generate), and configs load from a dict with dotted overrides."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distar.config import ConfigError, load_config
from distar.train import TrainConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_in_python.py"


@pytest.fixture
def fresh_accelerate():
    """accelerate's state is process-global: the example leaves it in bf16."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


def test_the_example_trains_resumes_exports_and_generates(tmp_path, monkeypatch, fresh_accelerate):
    from diffusers import DiffusionPipeline

    from distar.export.pipeline import generator_call, generator_images, load_generator
    from distar.train.logs import save_png

    monkeypatch.chdir(tmp_path)
    cell = runpy.run_path(str(EXAMPLE), run_name="__main__")
    tmp_path = tmp_path / cell["OUT"]

    # train, then a second trainer in the same process, in bf16, continues the step count
    run = tmp_path / "run"
    assert [r["step"] for r in cell["records"]] == [1, 2]
    assert cell["config"].loop.mixed_precision == "no"
    assert cell["resumed_trainer"].accelerator.mixed_precision == "bf16"
    assert [r["step"] for r in cell["resumed"]] == [3, 4]
    assert all(math.isfinite(r["generator/loss"]) for r in cell["records"] + cell["resumed"])
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    # the PNG has the training resolution the export records
    metadata = json.loads((tmp_path / "export" / "distar.json").read_text())
    assert metadata["step"] == 4
    png = tmp_path / "cat.png"
    assert Image.open(png).size == (metadata["resolution"], metadata["resolution"])

    # plain diffusers on the export, called as distar.json says, draws the same image
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "export")
    image = pipe("a photo of a cat", generator=torch.Generator().manual_seed(0), output_type="np",
                 **generator_call(metadata)).images[0]
    assert np.abs(pixels(png) - image).max() <= 1 / 255 + 1e-6

    # and so does the run folder's latest checkpoint, loaded without exporting
    pipe, call = load_generator(run)
    save_png(generator_images(pipe, ["a photo of a cat"], [0], call=call)[0], tmp_path / "from_run.png")
    assert np.array_equal(pixels(tmp_path / "from_run.png"), pixels(png))


def test_a_config_loads_from_a_dict_with_overrides():
    data = {"model": {"pretrained": "tiny:sd"}, "objective": {"preset": "di_star"}, "loop": {"max_steps": 2}}
    config = load_config(TrainConfig, data, ["loop.max_steps=6", "objective.reward_scale=30"])
    assert (config.loop.max_steps, config.objective.reward_scale, config.objective.divergence) == (6, 30.0, "pseudo_huber")
    assert data["loop"] == {"max_steps": 2} and "reward_scale" not in data["objective"]  # the dict is left as given
    with pytest.raises(ConfigError, match="unknown key 'loop.max_step'"):
        load_config(TrainConfig, data, ["loop.max_step=6"])
