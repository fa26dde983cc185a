"""What a run reports: each term of a weighted reward at every step (from the reward's one evaluation),
in log.jsonl, TensorBoard and an offline W&B run read back from its file."""

from __future__ import annotations

import json
import struct

import pytest
from train_helpers import PROMPTS, GaussianBackend, make_config

from distar.rewards.base import Reward, WeightedReward
from distar.train import Trainer

LOGGED = ("lr/generator", "lr/assistant", "time/samples_per_s", "time/images_per_s", "generator/reward/bright",
          "generator/reward/dark", "generator/reward", "generator/loss")


class Counted(Reward):
    """``scale`` × the mean of the decoded sample, counting its evaluations."""

    def __init__(self, name: str, scale: float) -> None:
        super().__init__()
        self.name, self.scale, self.calls = name, scale, 0

    def score(self, images, prompts):
        self.calls += 1
        return self.scale * images.flatten(1).mean(1)


def weighted() -> WeightedReward:
    return WeightedReward([(2.0, Counted("bright", 1.0)), (0.5, Counted("dark", -3.0))])


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("reward_scale", [1.0, 0.0])
def test_each_reward_term_is_logged_at_every_step_from_the_one_evaluation(tmp_path, reward_scale):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reward = weighted()
    config = make_config(
        tmp_path,
        objective={"reward_scale": reward_scale},
        loop={"max_steps": 4, "assistant_steps": 1, "gradient_accumulation_steps": 2},
        logging={"every": 2, "report_to": "tensorboard"},
        monitor={"every": 0},
    )
    Trainer(config, GaussianBackend(image=True), reward, PROMPTS).train()
    assert [term.calls for term in reward.rewards] == [4 * 2, 4 * 2]  # one per generator micro-batch, nothing more
    logged = read_log(tmp_path)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    for record in logged:
        bright, dark = record["generator/reward/bright"], record["generator/reward/dark"]
        assert dark == pytest.approx(-3 * bright, rel=1e-5)
        assert record["generator/reward"] == pytest.approx(2.0 * bright + 0.5 * dark, rel=1e-5)

    scalars = {}
    for events in (tmp_path / "tensorboard").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        scalars |= {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}
    for tag in ("generator/reward/bright", "generator/reward/dark"):
        window_means = [(logged[i][tag] + logged[i + 1][tag]) / 2 for i in (0, 2)]
        assert [(e.step, pytest.approx(e.value, rel=1e-5)) for e in scalars[tag]] == list(zip([2, 4], window_means))


def test_a_repeated_reward_name_is_numbered():
    reward = WeightedReward([(1.0, Counted("x", 1.0)), (1.0, Counted("y", 1.0)), (1.0, Counted("x", 2.0))])
    assert reward.names == ["x_1", "y", "x_2"]


def wandb_records(path) -> list:
    """The protobuf records of a W&B run file: a LevelDB-style log of 32 KiB blocks after a 7-byte header,
    each chunk a 7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last) and its data."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, records = 32768, 7, [], []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(b"".join(chunks)))
            chunks = []
    return records


def test_an_offline_wandb_run_holds_learning_rates_reward_terms_throughput_samples_and_the_config(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="W&B is not installed (pip install 'distar[wandb]')")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    config = make_config(
        tmp_path / "run",
        loop={"max_steps": 4, "assistant_steps": 1},
        logging={"every": 2, "report_to": "wandb"},
        sampling={"every": 2},
        monitor={"every": 0},
    )
    Trainer(config, GaussianBackend(image=True), weighted(), PROMPTS).train()
    wandb.teardown()  # the W&B service completes the run's file when it stops (at exit, in a script)

    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    history = {}
    for record in (r for r in records if r.WhichOneof("record_type") == "history"):
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        history[items["_step"]] = items
    assert sorted(history) == [0, 2, 4]
    assert {"samples/filenames", "samples/width"} <= set(history[0])  # the step-0 grid
    logged = read_log(tmp_path / "run")
    for step in (2, 4):
        assert set(LOGGED) <= set(history[step]), sorted(history[step])
        assert history[step]["lr/generator"] == logged[step - 1]["lr/generator"]
        assert history[step]["time/images_per_s"] == pytest.approx(logged[step - 1]["time/images_per_s"])
        mean = (logged[step - 2]["generator/reward/dark"] + logged[step - 1]["generator/reward/dark"]) / 2
        assert history[step]["generator/reward/dark"] == pytest.approx(mean, rel=1e-5)
    assert len(list(run_file.parent.glob("files/media/images/samples_*.png"))) == 3
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    run_config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run_config["optim"]["generator"]["lr"] == config.optim.generator.lr
    assert run_config["logging"]["report_to"] == "wandb" and run_config["output_dir"] == str(tmp_path / "run")


def test_a_nested_config_becomes_dotted_scalar_hyper_parameters():
    from distar.train.tracking import flat_config

    flat = flat_config({"optim": {"generator": {"lr": 1e-5, "betas": [0.9, 0.99]}}, "model": None, "seed": 3})
    assert flat == {"optim.generator.lr": 1e-5, "optim.generator.betas": "[0.9, 0.99]", "model": "None", "seed": 3}


def test_a_window_is_averaged_written_once_and_timed_on_its_last_step(tmp_path):
    import torch
    from accelerate import Accelerator

    from distar.train.tracking import TIMING_KEYS, StepLog

    config = make_config(tmp_path, data={"batch_size": 4}, loop={"assistant_steps": 2, "gradient_accumulation_steps": 3})
    log = StepLog(Accelerator(cpu=True), config, tmp_path / "log.jsonl")
    log.add({"generator/loss": torch.tensor(1.5)}, lrs=(0.25, 0.5), skipped=0, seconds=1.0)
    log.add({"generator/loss": torch.tensor(-2.0)}, lrs=(0.125, 0.5), skipped=1, seconds=3.0)
    records = log.flush(7)
    assert records[0] == {"step": 6, "generator/loss": 1.5, "lr/generator": 0.25, "lr/assistant": 0.5}
    timings = {k: records[1].pop(k) for k in TIMING_KEYS}
    assert records[1] == {"step": 7, "generator/loss": -2.0, "lr/generator": 0.125, "lr/assistant": 0.5, "skipped_updates": 1}
    samples = 4 * 3  # prompts per generator update: batch × accumulation × processes
    assert timings["time/step_s"] == 2.0 and timings["time/samples_per_s"] == samples / 2.0
    assert timings["time/images_per_s"] == samples * (1 + 2) / 2.0 and timings["mem/peak_mib"] > 0
    assert read_log(tmp_path) == [records[0], {**records[1], **timings}]
    assert log.window == [] and log.busy == 0.0
