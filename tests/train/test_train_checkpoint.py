"""Checkpoint helpers: RNG state, manifests, latest resolution, atomic pruning and replace, one run per folder."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from distar.config import ConfigError
from distar.train import checkpoint as ckpt
from distar.train.runfolder import clear_run, record_written


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


def make_checkpoint(root, step: int, manifest: bool = True):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / ckpt.TRAINER_STATE_FILE).write_text(json.dumps({"step": step}))
    ckpt.save_tensors({"w": torch.arange(64.0)}, path / ckpt.GENERATOR_FILE)
    if manifest:
        ckpt.write_manifest(path)
    return path


def test_latest_is_the_highest_step_that_verifies(tmp_path, caplog):
    assert ckpt.resolve_checkpoint("latest", tmp_path) is None
    for step in (2, 10, 4):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 20, manifest=False)  # killed before its manifest (cannot happen under this name)
    (tmp_path / ".checkpoint-30.tmp").mkdir()  # a save in progress
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4, 10, 20]
    with caplog.at_level("WARNING", logger="distar"):
        assert ckpt.resolve_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-10"
    assert "checkpoint-20/manifest.json: missing" in caplog.text
    assert ckpt.resolve_checkpoint(str(tmp_path / "checkpoint-4"), tmp_path) == tmp_path / "checkpoint-4"
    with pytest.raises(ckpt.CheckpointError, match="checkpoint-20 does not verify: .*manifest.json: missing"):
        ckpt.resolve_checkpoint(str(tmp_path / "checkpoint-20"), tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint folder"):
        ckpt.resolve_checkpoint(str(tmp_path / "nope"), tmp_path)


def flip_bit(file, offset: int = -5) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 1
    file.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: flip_bit(p / ckpt.GENERATOR_FILE), "generator.safetensors: SHA-256 does not match"),
        (lambda p: (p / ckpt.GENERATOR_FILE).write_bytes(b"\xff" * 9), "generator.safetensors: 9 bytes"),
        (lambda p: (p / ckpt.TRAINER_STATE_FILE).unlink(), "trainer_state.json: missing"),
        (lambda p: (p / ckpt.MANIFEST_FILE).write_text("{garbage"), "manifest.json: unreadable"),
        (lambda p: (p / ckpt.MANIFEST_FILE).write_text('{"files": {}}'), "lists no trainer_state.json"),
    ],
)
def test_damaged_checkpoints_are_named_and_skipped(tmp_path, damage, reason):
    make_checkpoint(tmp_path, 2)
    damage(make_checkpoint(tmp_path, 4))
    assert ckpt.resolve_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-2"
    with pytest.raises(ckpt.CheckpointError, match=reason):
        ckpt.resolve_checkpoint(str(tmp_path / "checkpoint-4"), tmp_path)
    damage(tmp_path / "checkpoint-2")
    with pytest.raises(ckpt.CheckpointError, match="none of the 2 checkpoint"):
        ckpt.resolve_checkpoint("latest", tmp_path)


def test_a_second_verification_notices_a_change(tmp_path):
    path = make_checkpoint(tmp_path, 3)
    assert ckpt.verify_checkpoint(path) is None and ckpt.verify_checkpoint(path) is None
    flip_bit(path / ckpt.GENERATOR_FILE)
    assert "SHA-256" in ckpt.verify_checkpoint(path)


def test_prune_keeps_the_newest_and_leaves_nothing_behind(tmp_path):
    for step in (1, 2, 3, 4):
        make_checkpoint(tmp_path, step)
    removed = ckpt.prune_checkpoints(tmp_path, 2)
    assert [p.name for p in removed] == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    assert ckpt.prune_checkpoints(tmp_path, None) == []


def test_leftovers_of_interrupted_saves_and_prunings_are_removed(tmp_path):
    make_checkpoint(tmp_path, 1)
    (tmp_path / ".checkpoint-2.tmp").mkdir()
    (tmp_path / ".trash-checkpoint-0").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    assert sorted(p.name for p in ckpt.remove_leftovers(tmp_path)) == [".checkpoint-2.tmp", ".trash-checkpoint-0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "notes.txt"]


def test_one_run_per_folder(tmp_path):
    ckpt.check_new_run(tmp_path / "new", overwrite=False)
    make_checkpoint(tmp_path, 1)
    (tmp_path / ckpt.LOG_FILE).write_text("")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds a run: pass --resume latest .* or --overwrite"):
        ckpt.check_new_run(tmp_path, overwrite=False)
    ckpt.check_new_run(tmp_path, overwrite=True)
    with pytest.raises(ConfigError, match="holds 2 file.s. distar did not write .e.g. log.jsonl."):
        clear_run(tmp_path)  # log.jsonl is not in the folder's list of what distar wrote, notes.txt is not distar's
    record_written(tmp_path, ckpt.LOG_FILE)
    (tmp_path / "notes.txt").unlink()
    clear_run(tmp_path)
    assert list(tmp_path.iterdir()) == [] and not ckpt.holds_run(tmp_path)


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
    expected = dict(zip(names, trainable))
    loaded = ckpt.load_tensors(tmp_path / "w.safetensors", expected)
    assert all(torch.equal(a, b) for a, b in zip(loaded, trainable))
    with pytest.raises(ckpt.CheckpointError, match=r"does not match the model: 0 missing .*, 1 unexpected"):
        ckpt.load_tensors(tmp_path / "w.safetensors", {"1.weight": trainable[0]})
    wrong = [("shape", torch.zeros(1, 4)), ("scalar", torch.tensor(1.0)), ("int", torch.zeros(1, 3, dtype=torch.int32))]
    for name, value in wrong:
        ckpt.save_tensors({**expected, "1.weight": value}, tmp_path / f"{name}.safetensors")
        with pytest.raises(ckpt.CheckpointError, match=f"{name}.safetensors: does not match the model: 1.weight"):
            ckpt.load_tensors(tmp_path / f"{name}.safetensors", expected)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ckpt.CheckpointError, match="bad.safetensors: not a readable safetensors file"):
        ckpt.load_tensors(tmp_path / "bad.safetensors", expected)
    with pytest.raises(ValueError, match="not parameters of Sequential"):
        ckpt.parameter_names(model, [nn.Parameter(torch.zeros(1))])
