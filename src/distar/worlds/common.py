"""What the embedded worlds share: one small fit loop for their models (the demos' runs, seed
statistics and report tables are :mod:`distar.sweep`'s)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor, nn

from distar.config import field

#: ``log(step, terms)``: called after every optimiser step with the batch's loss terms as floats.
Log = Callable[[int, dict[str, float]], None]
#: Where :func:`fit` stands: ``{"step": next step, "optimiser": state dict, "scheduler": state dict}``.
FitState = dict[str, Any]


@dataclasses.dataclass
class TrainLoop:
    """Optimisation settings of one world model's training (defaults: the shapes world's CLIP analogue)."""

    steps: int = field(1000, help="optimiser steps")
    batch_size: int = field(128, help="images per step")
    lr: float = field(1e-3, help="AdamW peak learning rate (linear warm-up over 5 %, cosine decay)")
    seed: int = field(1, help="seed of the data stream and of the model's initialisation")
    weight_decay: float = field(0.01, help="AdamW weight decay")


def fit(
    trained: nn.Module | Iterable[nn.Parameter],
    loop: TrainLoop,
    step_loss: Callable[[], dict[str, Tensor]],
    log: Log | None = None,
    *,
    schedule: Literal["warmup_cosine", "constant"] = "warmup_cosine",
    max_grad_norm: float | None = 1.0,
    checkpoint: Callable[[int, Callable[[], FitState]], None] | None = None,
    resume: FitState | None = None,
) -> dict[str, float]:
    """``loop.steps`` AdamW steps on ``step_loss()["loss"]``; returns the last step's terms.

    ``schedule``: linear warm-up over the first 5 % of steps (the first at 1/warm-up of the peak) then
    cosine decay to 0, or the constant ``loop.lr``. Gradients are clipped to ``max_grad_norm`` (None:
    never). A module is put in training mode for the loop and in eval mode after it.

    ``checkpoint(step, state)`` is called after every step, before ``log``; ``state()`` returns the loop's
    own state (the next step, the optimiser's and the schedule's state dicts, not copies: save them
    before the next step), built only when a checkpoint asks for it. ``resume`` = such a state continues from it; with the caller's model weights and random
    streams restored as they were at that step, the run is the one that was never interrupted.
    """
    module = trained if isinstance(trained, nn.Module) else None
    parameters = list(module.parameters() if module is not None else trained)
    optimiser = torch.optim.AdamW(parameters, lr=loop.lr, weight_decay=loop.weight_decay)
    warmup = max(1, loop.steps // 20)

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, loop.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    start = 0
    if resume is not None:
        optimiser.load_state_dict(resume["optimiser"])
        scheduler.load_state_dict(resume["scheduler"])
        start = int(resume["step"])
    if module is not None:
        module.train()
    terms: dict[str, float] = {}
    for step in range(start, loop.steps):
        losses = step_loss()
        optimiser.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimiser.step()
        scheduler.step()
        terms = {k: float(v.detach()) for k, v in losses.items()}
        if checkpoint is not None:
            checkpoint(step, lambda: {"step": step + 1, "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict()})
        if log is not None:  # may end the loop (e.g. a stop signal): the step is then complete and saved
            log(step, terms)
    if module is not None:
        module.eval()
    return terms
