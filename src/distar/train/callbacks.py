"""Callbacks: code of a notebook, a custom loop or a test that runs at named moments of training.

A :class:`Callback` overrides the methods it needs (every method of the base class does nothing) and
is passed as ``Trainer(..., callbacks=[...])`` or ``build_trainer(..., callbacks=[...])``. Callbacks
run on every process, in the order given, and may read the trainer (``trainer.step``,
``trainer.accelerator.is_main_process``, ...). :class:`FaultHook` is the one that tests use to kill a
run at a chosen point.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from distar.config import ConfigError

#: The phases of a training step that :meth:`Callback.on_phase` reports, in the order they run (the
#: assistant's pair ``loop.assistant_steps`` times).
PHASES = ("assistant step", "assistant update", "generator step", "generator update")

#: The points of a run that :meth:`Callback.on_point` reports: after a step's updates, after each tensor
#: file of a checkpoint, between the two records of a monitor pass, and inside the deletion of a pruned
#: checkpoint (``step`` is then the pruned checkpoint's).
POINTS = ("step", "checkpoint-write", "monitor", "prune", "eval-batch")

#: Test hook: ``DISTAR_KILL_AT=<point>:<step>[:<signal>]`` signals the process at that point; ``distar train`` and
#: ``distar eval`` read it once (:meth:`FaultHook.from_env`).
KILL_ENV = "DISTAR_KILL_AT"


class Callback:
    """Hooks into a :class:`~distar.train.loop.Trainer` (each method's ``trainer``); every method does
    nothing unless overridden."""

    def on_phase(self, trainer: Any, phase: str) -> None:
        """Before each phase of :meth:`~distar.train.loop.Trainer.train_step` (:data:`PHASES`): an
        update's forward and backward passes (``"<network> step"``), then its clipping and optimiser
        step (``"<network> update"``)."""

    def on_step(self, trainer: Any, record: dict[str, Tensor]) -> None:
        """After training step ``trainer.step``: ``record`` is this process's batch mean of every loss
        term (0-dim tensors on the device; ``float()`` waits for the GPU). ``log.jsonl`` gets the means
        over processes."""

    def on_checkpoint(self, trainer: Any, path: Path) -> None:
        """After ``path`` (``checkpoint-<step>/`` or ``best/``) is written completely."""

    def on_monitor(self, trainer: Any, record: dict[str, Any]) -> None:
        """After a held-out monitor pass: ``record`` has ``step``, the decision (``best``, ``alarm``) and,
        on the main process, ``means``: each model's (``generator``, ``ema``) mean of every figure."""

    def on_point(self, trainer: Any, point: str, step: int) -> None:
        """At an interruption point of the run (:data:`POINTS`) after training step ``step``."""


class CallbackList(Callback):
    """Calls each of ``callbacks`` in order."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def _each(self, method: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, method)(*args)

    def on_phase(self, trainer: Any, phase: str) -> None:
        self._each("on_phase", trainer, phase)

    def on_step(self, trainer: Any, record: dict[str, Tensor]) -> None:
        self._each("on_step", trainer, record)

    def on_checkpoint(self, trainer: Any, path: Path) -> None:
        self._each("on_checkpoint", trainer, path)

    def on_monitor(self, trainer: Any, record: dict[str, Any]) -> None:
        self._each("on_monitor", trainer, record)

    def on_point(self, trainer: Any, point: str, step: int) -> None:
        self._each("on_point", trainer, point, step)


class FaultHook(Callback):
    """Sends this process a signal at chosen points: a deterministic kill for the tests of resuming.

    ``spec`` is ``<point>:<step>[:<signal>]`` (SIGKILL unless a signal is named, e.g. ``step:3:SIGTERM``),
    several separated by commas; a point is one of :data:`POINTS`. ``distar train`` installs the one that
``$DISTAR_KILL_AT`` names (:meth:`from_env`)."""

    def __init__(self, spec: str) -> None:
        self.signals: dict[tuple[str, int], signal.Signals] = {}
        for entry in filter(None, spec.split(",")):
            parts = entry.split(":")
            try:
                point, step = parts[0], int(parts[1])
                sig = signal.Signals[parts[2]] if len(parts) > 2 else signal.SIGKILL
            except (IndexError, ValueError, KeyError):
                raise ConfigError(f"{KILL_ENV}: '{entry}' is not <point>:<step>[:<signal>]") from None
            if point not in POINTS or len(parts) > 3:
                raise ConfigError(f"{KILL_ENV}: '{entry}' is not <point>:<step>[:<signal>] with a point of {POINTS}")
            self.signals[point, step] = sig

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> FaultHook | None:
        """The hook that ``$DISTAR_KILL_AT`` asks for, or None when it is unset or empty."""
        spec = env.get(KILL_ENV, "")
        return cls(spec) if spec else None

    def on_point(self, trainer: Any, point: str, step: int) -> None:
        sig = self.signals.get((point, step))
        if sig is not None:
            os.kill(os.getpid(), sig)
