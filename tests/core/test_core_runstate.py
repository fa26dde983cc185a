"""The run-state store: atomic files, torn-line-tolerant JSONL, manifests, RNG capture, folder replacement."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distar import runstate
from distar.errors import UserError


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    runstate.write_json(path, {"step": 1})

    def fail(tmp):
        tmp.write_bytes(b'{"st')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="state.json"):
        runstate.write_with(path, fail)
    assert json.loads(path.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_safetensors_and_torch_files_are_written_whole_and_read_back(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2, requires_grad=True)}
    runstate.save_safetensors(tmp_path / "t.safetensors", tensors)
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert all(torch.equal(loaded[k], v.detach()) for k, v in tensors.items())
    runstate.save_torch(tmp_path / "s.pt", {"step": 3, "m": tensors["w"]})
    assert runstate.load_torch(tmp_path / "s.pt")["step"] == 3


def test_read_json_names_the_file_in_the_error_it_is_given(tmp_path):
    path = tmp_path / "garbled.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="garbled.json: unreadable"):
        runstate.read_json(path)
    with pytest.raises(KeyError):
        runstate.read_json(path, error=KeyError)


def test_a_torn_line_is_skipped_and_the_next_record_is_not_lost_with_it(tmp_path):
    log = runstate.JsonlLog(tmp_path / "log.jsonl", accept=lambda r: isinstance(r.get("step"), int))
    log.append([{"step": 1, "loss": 0.5}, {"step": 2, "loss": math.nan}])
    with log.path.open("ab") as f:
        f.write(b'{"step": 3, "lo')  # a kill during a write
    assert [r["step"] for r in log.read()] == [1, 2]
    assert log.read()[1]["loss"] is None  # non-finite values are strict JSON's null
    log.append([{"step": 3, "loss": 0.25}])
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    numbered = list(log.numbered())
    assert [(n, r is None) for n, _, r in numbered] == [(1, False), (2, False), (3, True), (4, False)]


def test_truncate_after_keeps_the_records_up_to_a_step_and_drops_unreadable_lines(tmp_path):
    log = runstate.JsonlLog(tmp_path / "log.jsonl")
    log.append([{"step": s} for s in range(5)])
    with log.path.open("ab") as f:
        f.write(b"\xff\xfe not utf-8\n")
    log.truncate_after(2)
    assert log.path.read_text() == "".join(json.dumps({"step": s}) + "\n" for s in range(3))


def test_a_manifest_verifies_its_folder_and_names_the_file_at_fault(tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"abc")
    (folder / "sub" / "b.json").write_text("{}")
    runstate.write_manifest(folder)
    assert runstate.verify_manifest(folder, required=["a.bin"]) is None
    assert "lists no c.bin" in runstate.verify_manifest(folder, required=["c.bin"])
    (folder / "a.bin").write_bytes(b"abd")
    assert "a.bin: SHA-256 does not match" in runstate.verify_manifest(folder)
    (folder / "a.bin").write_bytes(b"ab")
    assert "a.bin: 2 bytes, the manifest says 3" in runstate.verify_manifest(folder)
    (folder / "sub" / "b.json").unlink()
    (folder / "a.bin").write_bytes(b"abc")
    assert "b.json: missing" in runstate.verify_manifest(folder)


def test_rng_state_restores_every_global_generator_through_json():
    state = json.loads(json.dumps(runstate.rng_state()))

    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    first = draw()
    runstate.set_rng_state(state)
    assert draw() == first


def test_write_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    final = tmp_path / "partial"
    runstate.write_dir(final, lambda tmp: (tmp / "x.txt").write_text("1"))
    assert (final / "x.txt").read_text() == "1" and runstate.verify_manifest(final) is None

    def fail(tmp):
        (tmp / "x.txt").write_text("2")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        runstate.write_dir(final, fail)
    assert (final / "x.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial"]
    runstate.write_dir(final, lambda tmp: (tmp / "y.txt").write_text("3"))
    assert sorted(p.name for p in final.iterdir()) == [runstate.MANIFEST_FILE, "y.txt"]


def test_a_fit_checkpoint_refuses_a_corrupted_save_and_reads_one_without_a_manifest(tmp_path):
    from distar.fit import FitCheckpoint

    checkpoint = FitCheckpoint(tmp_path / "partial", every=2, key={"run": 1})
    checkpoint.save({"fit": {"step": 4}, "w": torch.ones(3)})
    assert checkpoint.load()["fit"]["step"] == 4
    assert FitCheckpoint(tmp_path / "partial", every=2, key={"run": 2}).load() is None
    state = checkpoint.folder / FitCheckpoint.STATE_FILE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    assert checkpoint.load() is None
    (checkpoint.folder / runstate.MANIFEST_FILE).unlink()  # a save written before manifests
    runstate.save_torch(state, {"fit": {"step": 2}, "key": checkpoint.key})
    assert checkpoint.load()["fit"]["step"] == 2


def test_stages_keep_finished_stages_with_their_settings(tmp_path):
    from distar.runstate import Stages

    lines: list[str] = []
    stages = Stages(tmp_path / "job", resume=False, echo=lines.append)
    assert not stages.done("a", {"x": 1})
    with stages.run("a", {"x": 1}) as figures:
        figures["loss"] = 0.5
    resumed = Stages(tmp_path / "job", resume=True, echo=lines.append)
    assert resumed.done("a", {"x": 1}) and resumed.figures == {"loss": 0.5} and "a" in resumed.timings
    assert not resumed.done("a", {"x": 2})  # other settings: run again
    assert not Stages(tmp_path / "job", resume=False, echo=lines.append).done("a", {"x": 1})
