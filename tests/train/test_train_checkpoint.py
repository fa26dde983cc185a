"""Checkpoint helpers: RNG state, latest resolution, pruning, atomic replace, trainable-weight files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from distar.train import checkpoint as ckpt


def draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_round_trips_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leave a cached Gaussian in numpy's state
    state = json.loads(json.dumps(ckpt.rng_state()))
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(state)
    assert draws() == expected


def make_checkpoint(root, step: int):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / ckpt.TRAINER_STATE_FILE).write_text(json.dumps({"step": step}))
    return path


def test_latest_is_the_highest_complete_step(tmp_path):
    assert ckpt.resolve_checkpoint("latest", tmp_path) is None
    for step in (2, 10, 4):
        make_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-20").mkdir()  # incomplete: no trainer_state.json
    (tmp_path / ".checkpoint-30.tmp").mkdir()  # a save in progress
    assert ckpt.resolve_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-10"
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4, 10]
    assert ckpt.resolve_checkpoint(str(tmp_path / "checkpoint-4"), tmp_path) == tmp_path / "checkpoint-4"
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        ckpt.resolve_checkpoint(str(tmp_path / "checkpoint-20"), tmp_path)


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        make_checkpoint(tmp_path, step)
    removed = ckpt.prune_checkpoints(tmp_path, 2)
    assert [p.name for p in removed] == ["checkpoint-1", "checkpoint-2"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert ckpt.prune_checkpoints(tmp_path, None) == []


def test_replace_dir_swaps_in_the_new_folder(tmp_path):
    final = make_checkpoint(tmp_path, 5)
    (final / "old").write_text("old")
    tmp = tmp_path / ".checkpoint-5.tmp"
    tmp.mkdir()
    (tmp / "new").write_text("new")
    ckpt.replace_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]


def test_trainable_weights_by_state_dict_name(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = ckpt.parameter_names(model, trainable)
    assert names == ["1.weight", "1.bias"] and set(names) <= set(model.state_dict())
    ckpt.save_tensors(dict(zip(names, trainable)), tmp_path / "w.safetensors")
    loaded = ckpt.load_tensors(tmp_path / "w.safetensors", names)
    assert all(torch.equal(a, b) for a, b in zip(loaded, trainable))
    with pytest.raises(ValueError, match="keys do not match"):
        ckpt.load_tensors(tmp_path / "w.safetensors", ["1.weight"])
    with pytest.raises(ValueError, match="not parameters of Sequential"):
        ckpt.parameter_names(model, [nn.Parameter(torch.zeros(1))])
