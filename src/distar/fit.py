"""One small fit loop for small models trained outside the trainer (the embedded worlds' models and
their builds): AdamW with warm-up and cosine decay, per-step logging and resumable checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor, nn

from distar import runstate
from distar.config import field

#: ``log(step, terms)``: called after every optimiser step with the batch's loss terms as floats.
Log = Callable[[int, dict[str, float]], None]
#: Where :func:`fit` stands: ``{"step": next step, "optimiser": state dict, "scheduler": state dict}``.
FitState = dict[str, Any]

logger = logging.getLogger(__name__)


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

class FitCheckpoint:
    """A fit's state in ``folder`` every ``every`` steps, so a world build that stops resumes.

    ``state.pt`` holds what :meth:`save` is given (the :func:`fit` state, weights, random streams),
    beside whatever files ``extra`` writes; the folder is written whole, with a manifest
    (:func:`distar.runstate.write_dir`). :meth:`load` gives the state back only when the folder verifies
    and its ``key`` (the settings the run depends on) is the current one.
    """

    STATE_FILE = "state.pt"

    def __init__(self, folder: str | Path, every: int, key: dict, stop: Callable[[], bool] = lambda: False) -> None:
        self.folder, self.every, self.key = Path(folder), every, json.dumps(key, sort_keys=True)
        self.stop = stop

    def due(self, step: int) -> bool:
        """Whether to save after ``step``: every ``every`` steps, and when ``stop()`` (the run ends there)."""
        return bool(self.every) and (step + 1) % self.every == 0 or self.stop()

    def load(self) -> dict | None:
        """The saved state, or None when there is none, it does not verify or it belongs to other settings.
        A folder without a manifest (written before manifests were added) is read as it is."""
        path = self.folder / self.STATE_FILE
        if not path.is_file():
            return None
        if (self.folder / runstate.MANIFEST_FILE).is_file():
            problem = runstate.verify_manifest(self.folder, required=[self.STATE_FILE])
            if problem is not None:
                logger.warning("not resuming from %s: %s", self.folder, problem)
                return None
        state = runstate.load_torch(path)
        return state if state["key"] == self.key else None

    def save(self, state: dict, extra: Callable[[Path], None] | None = None) -> None:
        """Write ``state`` and what ``extra(folder)`` writes, replacing the previous save whole."""

        def write(folder: Path) -> None:
            runstate.save_torch(folder / self.STATE_FILE, dict(state, key=self.key))
            if extra is not None:
                extra(folder)

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        runstate.write_dir(self.folder, write)
