"""Two nodes on one machine (two torchrun launchers, one CPU process each), each with its own run folder
as on nodes without a shared disk: checkpoints, a killed run resumed, nodes that disagree, and an input
that one node's disk refuses."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from distar.config import ConfigError
from distar.train import checkpoint as ckpt
from distar.train.callbacks import KILL_ENV
from distar.train.tracking import TIMING_KEYS
from distar.errors import UserError
from distar.train.nodes import agree, folder_layout, node_firsts
from distar.train.runfolder import LOCK_FILE

WORKER = Path(__file__).with_name("node_worker.py")
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_sd.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(folders: list[Path], *, flag: str | None = None, env: dict | None = None) -> list[tuple[int, str]]:
    """Run node_worker.py as node 0 and node 1 of one run, node n in ``folders[n]`` (its report beside it);
    each node's exit status and stderr."""
    flags = [flag] if flag else []
    return launch_nodes([[str(WORKER), str(f), str(report(f, n)), *flags] for n, f in enumerate(folders)], env=env)


def launch_nodes(commands: list[list[str]], *, env: dict | None = None, timeout: float = 300) -> list[tuple[int, str]]:
    """Run ``commands[n]`` (torchrun's program and its arguments) as node n of one run; each node's exit
    status and stderr."""
    port = str(free_port())
    launchers = []
    for rank, command in enumerate(commands):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(commands)), "--nproc_per_node", "1",
               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", port, *command]
        launchers.append(subprocess.Popen(
            cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, stderr=subprocess.PIPE, text=True
        ))
    errors = [p.communicate(timeout=timeout)[1] for p in launchers]
    return [(p.returncode, err) for p, err in zip(launchers, errors)]


def report(folder: Path, node: int) -> Path:
    return folder.with_name(f"{folder.name}-node{node}.json")


def log_records(folder: Path) -> list[dict]:
    lines = (folder / ckpt.LOG_FILE).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted two-node run, and the same run killed (SIGKILL on both nodes) at step 3 after
    the checkpoint of step 2."""
    root = tmp_path_factory.mktemp("nodes")
    whole, killed = [root / "whole-0", root / "whole-1"], [root / "killed-0", root / "killed-1"]
    for code, err in two_nodes(whole):
        assert code == 0, err[-3000:]
    for code, err in two_nodes(killed, env={KILL_ENV: "step:3"}):
        assert code != 0, err[-3000:]
    return whole, killed


def test_each_node_keeps_its_own_checkpoint_and_a_killed_run_resumes_as_if_uninterrupted(runs, tmp_path):
    whole, killed = runs
    assert [json.loads(report(f, n).read_text())["nodes"] for n, f in enumerate(whole)] == [[2, False], [2, False]]
    for rank, folder in enumerate(killed):
        assert [step for step, _ in ckpt.list_checkpoints(folder)] == [2]
        checkpoint = folder / "checkpoint-2"
        assert ckpt.verify_checkpoint(checkpoint) is None
        assert sorted(p.name for p in checkpoint.glob("rng_state_*.json")) == [ckpt.rng_state_file(rank)]
        assert (checkpoint / ckpt.GENERATOR_EMA_FILE).is_file() and (folder / LOCK_FILE).is_file()
    assert (killed[0] / ckpt.LOG_FILE).is_file() and not (killed[1] / ckpt.LOG_FILE).exists()

    resumed = [tmp_path / f.name for f in killed]
    for source, folder in zip(killed, resumed):
        shutil.copytree(source, folder)
    for code, err in two_nodes(resumed, flag="--resume"):
        assert code == 0, err[-3000:]
    for node, (reference, folder) in enumerate(zip(whole, resumed)):
        expected, got = (json.loads(report(f, node).read_text()) for f in (reference, folder))
        assert got["generator"] == expected["generator"]
        strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]  # noqa: E731
        assert strip(got["records"]) == strip(expected["records"])[2:]
    assert log_records(resumed[0]) == log_records(whole[0])
    assert [s for s, _ in ckpt.list_checkpoints(resumed[1])] == [s for s, _ in ckpt.list_checkpoints(whole[1])] == [2, 4]


def test_nodes_holding_different_checkpoints_are_refused_in_one_line(runs, tmp_path):
    _, killed = runs
    folders = [tmp_path / "node-0", tmp_path / "node-1"]
    shutil.copytree(killed[0], folders[0])  # node 0 has the checkpoint of step 2, node 1 nothing
    results = two_nodes(folders, flag="--resume")
    for code, err in results:
        refusal = [line for line in err.splitlines() if line.startswith("refused:")]
        assert code != 0 and refusal == [
            "refused: --resume latest: the nodes' run folders hold different checkpoints (node 0: step 2, "
            "node 1: none); give every node the same checkpoint, or start anew with --overwrite"
        ], err[-3000:]


def test_a_sharded_run_on_node_local_folders_is_refused_in_one_line(tmp_path):
    """loop.fsdp writes its optimiser states from the main process only: node 1's checkpoints would lack them."""
    folders = [tmp_path / "node-0", tmp_path / "node-1"]
    for folder, (code, err) in zip(folders, two_nodes(folders, flag="--fsdp")):
        refusal = [line for line in err.splitlines() if line.startswith("refused:")]
        assert code != 0 and refusal == [
            f"refused: output_dir: {folder} is not shared by the 2 nodes; loop.fsdp writes its optimiser "
            "states from the main process only: give every node the same shared folder"
        ], err[-3000:]


def test_an_input_refused_on_one_nodes_disk_stops_every_node_in_one_line(tmp_path):
    """`distar train` checks its inputs on every node before building a model: node 1's own folder holds
    a run, and both nodes refuse with node 1's line instead of node 0 waiting for node 1 at start-up."""
    folders = [tmp_path / "node-0", tmp_path / "node-1"]
    folders[1].mkdir()
    (folders[1] / ckpt.LOG_FILE).write_text("{}\n")
    train = ["-m", "distar", "train", "--config", str(CONFIG)]
    results = launch_nodes([[*train, f"output_dir={folder}"] for folder in folders], timeout=120)
    for code, err in results:
        refusal = [line for line in err.splitlines() if line.startswith("distar train:")]
        assert code != 0 and refusal == [
            (f"distar train: error: rank 1: {folders[1]} already holds a run: pass --resume latest to continue it "
             "or --overwrite to replace it")
        ], err[-3000:]
    assert not ckpt.holds_run(folders[0])


@pytest.mark.slow
def test_nodes_sharing_one_run_folder_write_one_checkpoint_with_every_rank_state(tmp_path):
    folder = tmp_path / "shared"
    for code, err in two_nodes([folder, folder], env={KILL_ENV: "step:3"}):
        assert code != 0, err[-3000:]
    checkpoint = folder / "checkpoint-2"
    assert ckpt.verify_checkpoint(checkpoint) is None
    assert sorted(p.name for p in checkpoint.glob("rng_state_*.json")) == [ckpt.rng_state_file(r) for r in (0, 1)]
    for code, err in two_nodes([folder, folder], flag="--resume"):
        assert code == 0, err[-3000:]
    assert [json.loads(report(folder, n).read_text())["nodes"] for n in (0, 1)] == [[2, True], [2, True]]
    assert [json.loads(line)["step"] for line in (folder / ckpt.LOG_FILE).read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.slow
def test_overwrite_clears_each_nodes_folder_after_checking_every_node(runs, tmp_path):
    _, killed = runs
    folders = [tmp_path / f.name for f in killed]
    for source, folder in zip(killed, folders):
        shutil.copytree(source, folder)
    (folders[1] / "notes.txt").write_text("mine")
    for code, err in two_nodes(folders, flag="--overwrite"):  # node 1's folder holds a file of the user's
        assert code != 0 and f"refused: --overwrite: {folders[1]} holds 1 file(s) distar did not write (e.g. notes.txt)" in err
    assert [s for s, _ in ckpt.list_checkpoints(folders[0])] == [2]  # nothing was cleared on node 0 either
    (folders[1] / "notes.txt").unlink()
    for code, err in two_nodes(folders, flag="--overwrite"):
        assert code == 0, err[-3000:]
    for folder in folders:
        assert [s for s, _ in ckpt.list_checkpoints(folder)] == [2, 4]
    assert [json.loads(line)["step"] for line in (folders[0] / ckpt.LOG_FILE).read_text().splitlines()] == [1, 2, 3, 4]


def test_node_firsts_are_the_ranks_of_local_rank_zero():
    assert node_firsts([0, 1, 2, 0, 1, 2]) == [0, 3]
    assert node_firsts([0, 0]) == [0, 1]
    assert node_firsts([0, 1, 0]) == [0, 2]


def test_folder_layout_from_which_nodes_see_node_zeros_probe():
    assert folder_layout([True, True, True], "out") is True
    assert folder_layout([True, False, False], "out") is False
    with pytest.raises(ConfigError, match=r"one folder for nodes 0, 2 but another for the rest"):
        folder_layout([True, False, True], "out")


@pytest.mark.parametrize(
    ("refusals", "message"),
    [([None, "no such file"], "rank 1: no such file"), (["no such file"] * 2, "no such file"), ([None, None], None)],
)
def test_agree_names_the_refusing_rank_unless_every_rank_refused_alike(monkeypatch, refusals, message):
    import accelerate.utils

    class TwoProcesses:
        num_processes = 2

    def check():
        if refusals[0] is not None:
            raise FileNotFoundError(refusals[0])
        return "built"

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: [str(e) if e else None for e in refusals])
    if message is None:
        assert agree(TwoProcesses(), check) == "built"
    else:
        with pytest.raises(UserError, match=f"^{message}$"):
            agree(TwoProcesses(), check)
