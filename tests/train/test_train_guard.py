"""The numerics guard on its own: a non-finite loss or gradient norm skips the step, counts it, and stops the run."""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from distar.errors import RunError
from distar.train.guard import NumericsGuard


def update(guard: NumericsGuard, loss_scale: float, *, module: nn.Module | None = None) -> tuple[nn.Module, bool]:
    """One update of a small linear layer on the loss ``loss_scale · sum(layer(x))``; the layer and whether it stepped."""
    module = module or nn.Linear(3, 2)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    loss = loss_scale * module(torch.ones(4, 3)).sum()
    loss.backward()
    _, stepped = guard.update("generator", module, optimizer, max_grad_norm=1.0, loss=loss)
    return module, stepped


def test_a_finite_update_is_clipped_and_stepped_and_its_gradients_freed():
    guard = NumericsGuard(Accelerator(cpu=True), max_bad_steps=2)
    module = nn.Linear(3, 2)
    before = [p.detach().clone() for p in module.parameters()]
    _, stepped = update(guard, 100.0, module=module)
    assert stepped and guard.skipped == []
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(module.parameters(), before)])
    assert 0 < moved.norm() <= 0.1 * 1.0 + 1e-6  # lr × the clipped norm
    assert all(p.grad is None for p in module.parameters())


@pytest.mark.parametrize("loss_scale", [float("nan"), float("inf")])
def test_a_non_finite_update_is_skipped_counted_and_stops_the_run_after_max_bad_steps(loss_scale, caplog):
    guard = NumericsGuard(Accelerator(cpu=True), max_bad_steps=2)
    module = nn.Linear(3, 2)
    before = [p.detach().clone() for p in module.parameters()]
    guard.start_step()
    _, stepped = update(guard, loss_scale, module=module)
    assert not stepped and guard.skipped == ["generator"]
    assert all(torch.equal(p, b) for p, b in zip(module.parameters(), before))
    assert all(p.grad is None for p in module.parameters())
    with caplog.at_level(logging.WARNING, logger="distar"):
        guard.end_step(1, {"generator/loss": torch.tensor(loss_scale)})
    assert "step 1: skipped 1 non-finite update(s) (generator)" in caplog.text
    assert (guard.bad_steps, guard.consecutive_bad_steps, guard.should_stop) == (1, 1, False)
    guard.check(1, lambda: "no checkpoint was written")  # one bad step of two allowed: nothing raised
    with pytest.raises(RunError, match="^finished at step 1, but its last 1 step"):
        guard.check_end(1, lambda: "no checkpoint was written")

    guard.start_step()
    update(guard, loss_scale)
    guard.end_step(2, {})
    assert guard.should_stop
    with pytest.raises(RunError, match=r"^stopped at step 2: 2 steps in a row .*max_bad_steps = 2\); last checkpoint: x$"):
        guard.check(2, lambda: "last checkpoint: x")


def test_a_good_step_resets_the_run_of_bad_steps_and_the_counters_round_trip():
    guard = NumericsGuard(Accelerator(cpu=True), max_bad_steps=3)
    for step, scale in enumerate((float("nan"), float("nan"), 1.0), start=1):
        guard.start_step()
        update(guard, scale)
        guard.end_step(step, {})
    assert guard.state_dict() == {"bad_steps": 2, "consecutive_bad_steps": 0}
    resumed = NumericsGuard(Accelerator(cpu=True), max_bad_steps=3)
    resumed.load_state_dict({"step": 7, "bad_steps": 2, "consecutive_bad_steps": 1})
    assert (resumed.bad_steps, resumed.consecutive_bad_steps) == (2, 1)
    resumed.load_state_dict({"step": 7})  # a checkpoint written before the counters existed
    assert resumed.state_dict() == {"bad_steps": 0, "consecutive_bad_steps": 0}
