"""Stop signals (SIGTERM, SIGINT, SIGUSR1) during `distar train`: the run finishes its step, saves it
as a checkpoint that verifies, names it in one line and exits 75; a second signal during the save exits
128 + N and leaves the previous checkpoint as latest. Resuming loses no step and continues the losses
of an uninterrupted run bit for bit. The runs are in-process `distar train` calls on the tiny SD config
(as in test_train_kill.py), signalled by $DISTAR_KILL_AT or by a timer thread."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from test_train_kill import COMMON, CONFIG, assert_checkpoints_verify, losses

from distar.cli import main
from distar.train import checkpoint as ckpt
from distar.train.callbacks import KILL_ENV
from distar.train.preemption import EXIT_PREEMPTED, StopSignals

SAVED = re.compile(r"^distar train: stopped by (SIG\w+) after step (\d+): saved (\S+) \(continue with --resume latest\)$")


def train(out: Path, *args: str) -> int:
    """`distar train` in this process; its exit status."""
    try:
        return main(["train", "--config", str(CONFIG), f"output_dir={out}", *COMMON, *args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def last_logged_step(out: Path) -> int:
    return losses(out)[-1]["step"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("straight")
    assert train(out) == 0
    return losses(out)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_a_stop_signal_saves_the_current_step_names_it_and_resume_is_exact(straight, tmp_path, monkeypatch, capfd, name):
    out = tmp_path / "run"
    monkeypatch.setenv(KILL_ENV, f"step:3:{name}")  # delivered inside step 3's bookkeeping
    assert train(out) == EXIT_PREEMPTED
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("distar train: stopped")]
    assert len(lines) == 1 and (match := SAVED.match(lines[0])), lines
    assert match.groups() == (name, "3", str(out / "checkpoint-3"))
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 3] and last_logged_step(out) == 3  # 0 steps lost
    assert_checkpoints_verify(out)
    monkeypatch.delenv(KILL_ENV)
    assert train(out, "--resume", "latest") == 0
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in capfd.readouterr().err
    assert losses(out) == straight


def test_a_second_signal_during_the_save_leaves_the_previous_checkpoint_latest(straight, tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    monkeypatch.setenv(KILL_ENV, "step:5:SIGTERM,checkpoint-write:5:SIGTERM")
    assert train(out) == 128 + signal.SIGTERM
    err = capfd.readouterr().err.splitlines()
    assert err[-1] == f"distar train: stopped by a second SIGTERM, nothing more saved; last checkpoint: {out / 'checkpoint-4'}"
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 4]
    assert ckpt.resolve_checkpoint("latest", out) == out / "checkpoint-4"
    monkeypatch.delenv(KILL_ENV)
    assert train(out, "--resume", "latest") == 0
    assert losses(out) == straight


def test_stop_signals_restore_the_previous_handlers_and_refuse_unknown_names():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals(["USR1"], last_checkpoint=str) as stop:
        assert signal.getsignal(signal.SIGUSR1) != before
        signal.raise_signal(signal.SIGUSR1)
        assert stop.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before
    with pytest.raises(ValueError, match="uncatchable signal 'KILL'"):
        StopSignals(["KILL"], last_checkpoint=str)
    assert main(["train", "--config", str(CONFIG), "loop.stop_signals=[SIGNOPE]", "--dry-run"]) == 2


def test_sigterm_at_random_moments_loses_no_step_and_resume_is_exact(straight, tmp_path, monkeypatch):
    """SIGTERM from a timer thread at a random moment of each run's training loop, then --resume latest,
    until the run ends: every signal saved the run's last step, and the losses are exact."""
    out, rng, timers = tmp_path / "run", random.Random(0), []
    enter = StopSignals.__enter__

    def enter_and_start_a_timer(self: StopSignals) -> StopSignals:
        timers.append(threading.Timer(rng.uniform(0.0, 0.25), os.kill, (os.getpid(), signal.SIGTERM)))
        timers[-1].start()
        return enter(self)

    monkeypatch.setattr(StopSignals, "__enter__", enter_and_start_a_timer)
    late: list[int] = []  # a signal after the run's handlers were taken down (the run had ended)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: late.append(signum))
    statuses = []
    try:
        while not ckpt.list_checkpoints(out) or ckpt.list_checkpoints(out)[-1][0] < 8:
            statuses.append(train(out, "--resume", "latest"))
            timers[-1].join()
            assert statuses[-1] in (0, EXIT_PREEMPTED)
            assert_checkpoints_verify(out)
            assert ckpt.list_checkpoints(out)[-1][0] == last_logged_step(out)  # the last step is saved
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert statuses.count(EXIT_PREEMPTED) >= 1
    assert losses(out) == straight
