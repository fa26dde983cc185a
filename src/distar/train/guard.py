"""The numerics guard of a training run: skip an update whose loss or gradient norm is not finite.

An update whose loss or gradient norm is not finite is skipped (no optimiser or EMA step) and its
step counted as bad; ``loop.max_bad_steps`` bad steps in a row stop the run. The check is one scalar
per update, fused from the loss and the norm and all-reduced, so every process decides alike.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from distar.errors import RunError

logger = logging.getLogger(__name__)


class NumericsGuard:
    """Clips and steps each update unless it is not finite, and counts the steps with a skipped update."""

    def __init__(self, accelerator: Accelerator, max_bad_steps: int) -> None:
        self.accelerator = accelerator
        self.max_bad_steps = max_bad_steps
        self.bad_steps = 0  # steps with a skipped (non-finite) update, in total ...
        self.consecutive_bad_steps = 0  # ... and in a row up to the current step
        self.skipped: list[str] = []  # the updates skipped in the current (or last) step

    def update(
        self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer, *, max_grad_norm: float | None, loss: Tensor
    ) -> tuple[Tensor, bool]:
        """Clip the gradients of ``module`` (after backward) and step ``optimizer`` unless the loss or
        the gradient norm is not finite, then free the gradients. Returns the norm before clipping and
        whether the step was made.

        The wrapped module's own parameters are passed so accelerate can use FSDP's sharded clipping;
        with ``max_grad_norm: null`` the norm is measured but nothing is clipped. Under fp16 a gradient
        overflow with a finite loss is the grad scaler's to skip: not a bad update.
        """
        acc = self.accelerator
        norm = acc.clip_grad_norm_(module.parameters(), max_grad_norm or math.inf).detach().float()
        scaler = getattr(acc, "scaler", None)
        probe = loss.detach().float() if scaler is not None else loss.detach().float() + norm
        bad = (~torch.isfinite(probe)).float()
        if acc.num_processes > 1:
            bad = acc.reduce(bad, "sum")
        if bool(bad > 0):
            if scaler is not None:
                scaler.update()  # the scaler already unscaled these gradients; reset it for the next step
            self.skipped.append(name)
            stepped = False
        else:
            optimizer.step()
            stepped = not (scaler is not None and optimizer.step_was_skipped)
        optimizer.zero_grad(set_to_none=True)
        return norm, stepped

    def start_step(self) -> None:
        """Forget the skipped updates of the previous step."""
        self.skipped = []

    def end_step(self, step: int, logs: dict[str, Tensor]) -> None:
        """Count ``step`` as bad if an update was skipped (logging its terms), else reset the run of bad steps."""
        if not self.skipped:
            self.consecutive_bad_steps = 0
            return
        self.bad_steps += 1
        self.consecutive_bad_steps += 1
        terms = ", ".join(f"{k} {v.item():.4g}" for k, v in logs.items())
        logger.warning(
            "step %d: skipped %d non-finite update(s) (%s): %s [%d in a row, %d in total]",
            step, len(self.skipped), ", ".join(self.skipped), terms, self.consecutive_bad_steps, self.bad_steps,
        )

    @property
    def should_stop(self) -> bool:
        """Whether ``loop.max_bad_steps`` steps in a row were bad."""
        return self.consecutive_bad_steps >= self.max_bad_steps

    def check(self, step: int, last_checkpoint: Callable[[], str]) -> None:
        """Stop the run when :attr:`should_stop`: a :class:`~distar.errors.RunError` that ends with
        ``last_checkpoint()``."""
        if self.should_stop:
            raise RunError(
                f"stopped at step {step}: {self.consecutive_bad_steps} steps in a row with a non-finite "
                f"loss or gradient norm (loop.max_bad_steps = {self.max_bad_steps}); {last_checkpoint()}"
            )

    def check_end(self, step: int, last_checkpoint: Callable[[], str]) -> None:
        """Refuse a finished run whose last steps skipped updates (:class:`~distar.errors.RunError`)."""
        if self.consecutive_bad_steps:
            raise RunError(
                f"finished at step {step}, but its last {self.consecutive_bad_steps} step(s) skipped "
                f"non-finite updates: the weights may be useless; {last_checkpoint()}"
            )

    def state_dict(self) -> dict[str, int]:
        return {"bad_steps": self.bad_steps, "consecutive_bad_steps": self.consecutive_bad_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.bad_steps = state.get("bad_steps", 0)
        self.consecutive_bad_steps = state.get("consecutive_bad_steps", 0)
