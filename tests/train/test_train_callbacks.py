"""Callbacks: what a Trainer calls, in which order and with which arguments; the fault hook of the kill tests."""

from __future__ import annotations

import json
import signal

import pytest
from train_helpers import PROMPTS, GaussianBackend, MeanReward, make_config

from distar.config import ConfigError
from distar.train import Callback, Trainer
from distar.train import checkpoint as ckpt
from distar.train.callbacks import KILL_ENV, PHASES, FaultHook


class Recorder(Callback):
    """Every call as a tuple; checkpoints are checked to verify when they are announced."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.records: list[dict] = []

    def on_phase(self, trainer, phase):
        self.events.append(("phase", trainer.step, phase))

    def on_step(self, trainer, record):
        self.records.append(record)
        self.events.append(("step", trainer.step))

    def on_checkpoint(self, trainer, path):
        self.events.append(("checkpoint", trainer.step, path.name, ckpt.verify_checkpoint(path)))

    def on_monitor(self, trainer, record):
        self.events.append(("monitor", trainer.step, record["step"], record["best"], sorted(record["means"])))

    def on_point(self, trainer, point, step):
        self.events.append(("point", point, step))


def step_events(step: int, assistant_steps: int) -> list[tuple]:
    """What one training step calls, from its first phase to its "step" point."""
    phases = [*PHASES[:2] * assistant_steps, *PHASES[2:]]
    return [("phase", step - 1, phase) for phase in phases] + [("step", step), ("point", "step", step)]


def checkpoint_events(step: int, folder: str, pruned: list[int] = ()) -> list[tuple]:
    writes = [("point", "checkpoint-write", step)] * 2  # generator and assistant weights (no EMA)
    return writes + [("point", "prune", p) for p in pruned] + [("checkpoint", step, folder, None)]


def test_callbacks_are_called_in_order_with_the_trainer_and_the_records_of_the_log(tmp_path):
    recorder, second = Recorder(), Recorder()
    config = make_config(
        tmp_path,
        loop={"max_steps": 4, "assistant_steps": 2},
        checkpointing={"every": 2, "total_limit": 1},
        monitor={"every": 2, "prompts": 2, "seeds": [0, 1], "drift_steps": 0, "select": "train_helpers:BrightnessJudge",
                 "judges": [{"name": "train_helpers:BrightnessJudge"}]},
    )
    Trainer(config, GaussianBackend(image=True), MeanReward(), PROMPTS, callbacks=[recorder, second]).train()

    assert second.events == recorder.events
    monitors = {event[2]: event for event in recorder.events if event[0] == "monitor"}
    assert sorted(monitors) == [0, 2, 4]
    assert all(event[4] == ["generator"] for event in monitors.values())  # one process: the main one has the means

    def monitor_events(step: int) -> list[tuple]:
        best = monitors[step][3]
        return [("point", "monitor", step), *(checkpoint_events(step, "best") if best else []), monitors[step]]

    expected = monitor_events(0)
    for step in (1, 2, 3, 4):
        expected += step_events(step, assistant_steps=2)
        if step % 2 == 0:
            expected += monitor_events(step) + checkpoint_events(step, f"checkpoint-{step}", [2] if step == 4 else [])
    assert recorder.events == expected
    assert any(event[3] for event in monitors.values())  # the monitor kept a best/ at least once

    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(set(record) == set(recorder.records[0]) and all(v.dim() == 0 for v in record.values())
               for record in recorder.records)
    for key in recorder.records[0]:
        assert [float(record[key]) for record in recorder.records] == [line[key] for line in logged], key


def test_train_step_reports_its_phases_and_its_record_to_a_custom_loop(tmp_path):
    recorder = Recorder()
    config = make_config(tmp_path, loop={"assistant_steps": 3}, monitor={"every": 0})
    trainer = Trainer(config, GaussianBackend(), MeanReward(), PROMPTS, callbacks=[recorder])
    logs = trainer.train_step()
    assert recorder.events == step_events(1, assistant_steps=3)[:-1]  # the "step" point belongs to train()
    assert recorder.records == [logs]


def test_the_fault_hook_signals_at_its_points_only(tmp_path):
    received = []
    recorder = Recorder()
    previous = signal.signal(signal.SIGUSR2, lambda *_: received.append(recorder.events[-1]))
    try:
        hook = FaultHook("step:2:SIGUSR2,checkpoint-write:4:SIGUSR2,monitor:9:SIGUSR2")
        config = make_config(tmp_path, loop={"max_steps": 4}, checkpointing={"every": 4}, monitor={"every": 0})
        Trainer(config, GaussianBackend(), MeanReward(), PROMPTS, callbacks=[recorder, hook]).train()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert received == [("point", "step", 2), ("point", "checkpoint-write", 4), ("point", "checkpoint-write", 4)]


def test_the_fault_hook_reads_its_spec_once_and_refuses_a_bad_one():
    assert FaultHook("step:3,prune:2:SIGTERM").signals == {("step", 3): signal.SIGKILL, ("prune", 2): signal.SIGTERM}
    assert FaultHook.from_env({}) is None and FaultHook.from_env({KILL_ENV: ""}) is None
    assert FaultHook.from_env({KILL_ENV: "monitor:4"}).signals == {("monitor", 4): signal.SIGKILL}
    for spec in ("step", "step:x", "step:3:SIGNOPE", "nowhere:3", "step:3:SIGTERM:more"):
        with pytest.raises(ConfigError, match=f"DISTAR_KILL_AT: '{spec}' is not <point>:<step>"):
            FaultHook(spec)


def test_build_trainer_passes_the_callbacks(tmp_path, monkeypatch):
    import distar.backends
    from distar.train.build import build_trainer

    monkeypatch.setattr(distar.backends, "build_backend", lambda *args, **kwargs: GaussianBackend())
    config = make_config(
        tmp_path, model={"pretrained": "tiny:sd"}, objective={"preset": "sim", "reward_scale": 0.0}, monitor={"every": 0}
    )
    recorder = Recorder()
    build_trainer(config, callbacks=[recorder]).train_step()
    assert recorder.events == step_events(1, assistant_steps=2)[:-1]
