"""One writer per run folder: a second run is refused in one line naming the holder, a lock left by
a killed run is taken over, and a worker whose launcher dies saves its step and exits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from test_train_kill import COMMON, CONFIG
from train_helpers import PROMPTS, GaussianBackend, MeanReward, make_config

from distar.cli import main
from distar.config import ConfigError
from distar.train import checkpoint as ckpt
from distar.train.loop import Trainer
from distar.train.nodes import PROBE_PREFIX
from distar.train.runfolder import LOCK_FILE, RunLock, check_overwrite, clear_run

HOLD = "import sys, time; from distar.train.runfolder import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds the lock of ``folder`` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def train(out: Path, *args: str) -> int:
    try:
        return main(["train", "--config", str(CONFIG), f"output_dir={out}", *COMMON, *args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path, capfd):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        for args in ([], ["--resume", "latest"], ["--overwrite"]):
            assert train(out, *args) == 2
            err = capfd.readouterr().err.strip().splitlines()
            assert err == [
                f"distar train: error: {out} is in use by another run (pid {holder.pid} on {socket.gethostname()} "
                f"since {err[0].split(' since ')[1].split(')')[0]}): wait for it to end, stop it, or choose another output_dir"
            ]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the refused runs wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_the_trainer_refuses_a_locked_folder_and_releases_its_lock_at_the_end(tmp_path):
    def trainer() -> Trainer:
        return Trainer(make_config(tmp_path, loop={"max_steps": 2}), GaussianBackend(), MeanReward(), PROMPTS)

    with RunLock(tmp_path):
        with pytest.raises(ConfigError, match="is in use by another run"):
            trainer().train()
    assert len(trainer().train()) == 2
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released cleanly
    with RunLock(tmp_path):
        pass


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capfd):
    out = tmp_path / "run"
    holder = hold_lock(out)
    holder.kill()
    holder.wait()
    assert f"pid {holder.pid} on" in (out / LOCK_FILE).read_text()  # the stale record stays
    assert train(out) == 0
    err = capfd.readouterr().err
    assert f"distar: took over the lock of a run that is gone (pid {holder.pid} on {socket.gethostname()}" in err
    assert ckpt.list_checkpoints(out)


LAUNCHER = "import subprocess, sys; worker = subprocess.Popen(sys.argv[2:], stderr=open(sys.argv[1], 'w')); print(worker.pid, flush=True); worker.wait()"


def test_a_worker_saves_and_exits_soon_after_its_launcher_dies(tmp_path):
    out, log = tmp_path / "run", tmp_path / "worker.err"
    worker = [sys.executable, "-m", "distar", "train", "--config", str(CONFIG), f"output_dir={out}", *COMMON, "loop.max_steps=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHELASTIC_RUN_ID": "test"}  # as torchrun starts its workers
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(log), *worker], stdout=subprocess.PIPE, text=True, env=env)
    pid = int(launcher.stdout.readline())
    while not ckpt.list_checkpoints(out):  # training, and has saved checkpoint-2
        assert launcher.poll() is None, log.read_text()[-2000:]
        time.sleep(0.1)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    killed = time.monotonic()
    while _alive(pid):
        assert time.monotonic() - killed < 120, "the worker outlived its launcher"
        time.sleep(0.05)
    print(f"worker gone {time.monotonic() - killed:.2f} s after its launcher was killed")
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("distar train: stopped by SIGTERM after step ") and "saved" in last, last
    assert f"the launcher (pid {launcher.pid}) is gone: stopping" in log.read_text()
    assert ckpt.verify_checkpoint(ckpt.list_checkpoints(out)[-1][1]) is None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------- --overwrite


def test_overwrite_removes_only_what_distar_wrote_and_refuses_a_folder_with_user_files(tmp_path, capfd):
    out = tmp_path / "run"
    assert train(out, "sampling.every=4", "logging.report_to=tensorboard") == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert any(n.startswith("samples/") for n in written) and any(n.startswith("tensorboard/") for n in written)
    user_files = {"samples/holiday.png": b"png", "checkpoint-8/thesis.tex": b"tex", "tensorboard/notes.txt": b"n", "notes.txt": b"n"}
    for name, data in user_files.items():
        (out / name).write_bytes(data)
        capfd.readouterr()
        assert train(out, "--overwrite") == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert err == [f"distar train: error: --overwrite: {out} holds 1 file(s) distar did not write (e.g. {name}); move them out or choose another output_dir"]
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(written + [name])
        (out / name).unlink()
    assert train(out, "--overwrite", "loop.max_steps=2") == 0
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2] and not (out / "samples").exists()


def test_a_probe_left_by_a_multi_node_start_is_distars_and_cleared(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    probe = out / f"{PROBE_PREFIX}0123abcd"
    probe.touch()
    check_overwrite(out)
    clear_run(out)
    assert not probe.exists()
    (out / "notes.txt").touch()
    with pytest.raises(ConfigError, match=r"holds 1 file\(s\) distar did not write \(e.g. notes.txt\)"):
        check_overwrite(out)


def test_an_old_checkpoint_is_distars_only_when_its_manifest_lists_every_file(tmp_path):
    out = tmp_path / "run"
    assert train(out, "loop.max_steps=2") == 0
    (out / "checkpoint-2" / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="did not write"):
        check_overwrite(out)


@pytest.mark.parametrize("where", ["/", "home"])
def test_the_root_and_the_home_folder_are_refused_as_run_folders(tmp_path, monkeypatch, capfd, where):
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = "/" if where == "/" else str(tmp_path)
    for args in ([], ["--overwrite"]):
        assert train(Path(folder), *args) == 2
        what = "/" if where == "/" else "the home folder"
        assert capfd.readouterr().err.strip().splitlines()[-1] == (
            f"distar train: error: output_dir: {folder} is {what}; give a folder of its own to the run"
        )
    assert not (Path(folder) / ckpt.CONFIG_FILE).exists() and not (Path(folder) / LOCK_FILE).exists()


@pytest.mark.parametrize("project", ["../../escape", "/tmp/abs", "..", "a\\b"])
def test_a_tracker_project_must_stay_inside_the_run_folder(tmp_path, capfd, project):
    out = tmp_path / "deep" / "run"
    assert train(out, f"logging.project={project}", "logging.report_to=tensorboard") == 2
    assert "must be a plain name (it names a folder inside the run folder)" in capfd.readouterr().err
    assert not (tmp_path / "deep").exists()
