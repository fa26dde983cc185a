"""A Trainer's checkpoint state on its own: what is written, what is restored, what is refused."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import PROMPTS, GaussianBackend, MeanReward, make_config

from distar.train import Trainer
from distar.train import checkpoint as ckpt
from distar.train.state import last_checkpoint, trainer_state


def trainer(tmp_path, **sections) -> Trainer:
    config = make_config(tmp_path, ema={"decay": 0.9}, monitor={"every": 0}, **sections)
    return Trainer(config, GaussianBackend(), MeanReward(), PROMPTS)


def test_a_checkpoint_restores_weights_ema_data_position_counters_and_random_state(tmp_path):
    first = trainer(tmp_path)
    for _ in range(3):
        first.train_step()
    first.guard.bad_steps, first.guard.consecutive_bad_steps = 2, 1
    shadow = [s.clone() for s in first.ema.shadow_params]
    path = first.save_checkpoint()
    assert path == tmp_path / "checkpoint-3" and ckpt.verify_checkpoint(path) is None
    state = json.loads((path / ckpt.TRAINER_STATE_FILE).read_text())
    assert {k: state[k] for k in ("step", "world_size", "bad_steps", "consecutive_bad_steps")} == {
        "step": 3, "world_size": 1, "bad_steps": 2, "consecutive_bad_steps": 1
    }
    expected_next = first.train_step()

    second = trainer(tmp_path)
    second.load_checkpoint(path)
    assert (second.step, second.bad_steps, second.consecutive_bad_steps) == (3, 2, 1)
    assert second.data.state_dict() == json.loads((path / ckpt.TRAINER_STATE_FILE).read_text())["data"]
    assert all(torch.equal(a, b) for a, b in zip(second.ema.shadow_params, shadow, strict=True))
    resumed_next = second.train_step()
    assert {k: v.item() for k, v in resumed_next.items()} == {k: v.item() for k, v in expected_next.items()}


@pytest.mark.parametrize(
    "state, problem",
    [
        ({"step": 2, "data": {"position": 0}}, "needs a positive integer 'world_size'"),
        ({"step": 2, "world_size": 0, "data": {"position": 0}}, "needs a positive integer 'world_size'"),
        ({"step": 2, "world_size": 1, "data": {}}, "needs 'data': {'position': <int>}"),
        ({"step": 9, "world_size": 1, "data": {"position": 0}}, "step 9 is past loop.max_steps = 6"),
    ],
)
def test_a_trainer_state_that_cannot_be_used_is_named_in_one_line(tmp_path, state, problem):
    (tmp_path / ckpt.TRAINER_STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ckpt.CheckpointError) as err:
        trainer_state(tmp_path, max_steps=6)
    assert str(err.value).startswith(f"{tmp_path / ckpt.TRAINER_STATE_FILE}: {problem}")
    assert "\n" not in str(err.value)


def test_the_last_checkpoint_is_named_for_error_messages(tmp_path):
    assert last_checkpoint(tmp_path) == "no checkpoint was written"
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert last_checkpoint(tmp_path) == f"last checkpoint: {tmp_path / 'checkpoint-10'}"
