"""Stop a run cleanly when asked to: by a scheduler's signal, or because its launcher died.

SLURM and Kubernetes send SIGTERM some time before they kill a job. While :class:`StopSignals` is
active, the first stop signal (``loop.stop_signals``, default SIGTERM, SIGINT and SIGUSR1) only sets a
flag: the trainer finishes the step it is in, writes a checkpoint and raises :class:`Preempted`
(``distar train`` prints one line naming the checkpoint and exits with :data:`EXIT_PREEMPTED`). A second
stop signal raises :class:`Preempted` at once, without saving: a checkpoint being written is abandoned
(it is never renamed to ``checkpoint-<step>``), so the previous one stays ``latest``, and the exit
status is 128 + the signal number, as the shell reports a process the signal ended.

``distar eval`` and ``distar world build`` use the same signals at their own granularity: eval
finishes the batch of images (or of scores) in progress, which is written, and a rerun of the same
command continues from its results folder; a world build ends its current optimiser step (the
reference stage saves its state there) and ``--resume`` continues. Both exit with
:data:`EXIT_PREEMPTED` too.

A process started by a launcher (``torchrun``, ``accelerate launch``) also watches its parent: when
the launcher dies the worker's parent changes, and the worker stops as if it had been sent SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Callable, Sequence

from distar.errors import Preempted

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

#: Exit status of a run stopped by a signal after saving its checkpoint (EX_TEMPFAIL: resume later).
EXIT_PREEMPTED = 75

#: The signals that stop a run by default (``loop.stop_signals`` of a training config).
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

#: Environment variables a launcher sets in the workers it starts (torchrun / torch elastic, accelerate).
LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")

#: Seconds between two looks at the parent process id.
PARENT_POLL_S = 0.5


def signal_number(name: str) -> signal.Signals:
    """``"SIGTERM"`` or ``"TERM"`` → :data:`signal.SIGTERM`; ValueError naming the choices otherwise."""
    key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
    if key not in signal.Signals.__members__ or key in ("SIGKILL", "SIGSTOP"):
        raise ValueError(f"unknown or uncatchable signal {name!r} (e.g. SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP)")
    return signal.Signals[key]


class StopSignals:
    """Within ``with StopSignals(names):``, the first of these signals sets :attr:`received` and a second
    raises :class:`Preempted`; the previous handlers come back on exit.

    ``last_checkpoint()`` says which checkpoint a run stopped by a second signal leaves. Handlers can
    only be set from the main thread: elsewhere this does nothing (signals act as before).
    Under a launcher, a thread also turns the launcher's death into SIGTERM for this process.
    """

    def __init__(self, names: Sequence[str] = STOP_SIGNALS, *, last_checkpoint: Callable[[], str]) -> None:
        self.signals = [signal_number(n) for n in names]
        self.last_checkpoint = last_checkpoint
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._done = threading.Event()

    def __enter__(self) -> StopSignals:
        self.received = None
        self._done.clear()
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        if any(os.environ.get(k) for k in LAUNCHER_ENV):
            threading.Thread(target=self._watch_parent, args=(os.getppid(),), daemon=True).start()
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.received is None:
            self.received = sig
            return
        raise Preempted(f"stopped by a second {sig.name}, nothing more saved; {self.last_checkpoint()}", 128 + signum)

    def _watch_parent(self, parent: int) -> None:
        """SIGTERM this process once its parent (the launcher) is gone."""
        while not self._done.wait(PARENT_POLL_S):
            if os.getppid() != parent:
                logger.warning("the launcher (pid %d) is gone: stopping", parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def preempted(self, message: str) -> Preempted:
        """The error that ends a run stopped by a signal once its work so far is kept: "stopped by
        <signal> ``message``", exit status :data:`EXIT_PREEMPTED`."""
        sig = self.received.name if self.received else "a stop signal to another process"
        return Preempted(f"stopped by {sig} {message}", EXIT_PREEMPTED)

    def stopped(self, step: int, saved: Path) -> Preempted:
        """The error that ends a training run stopped by a signal after step ``step``, saved as checkpoint ``saved``."""
        return self.preempted(f"after step {step}: saved {saved} (continue with --resume latest)")

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any process received a stop signal (the same answer on every process)."""
        if accelerator.num_processes == 1:
            return self.received is not None
        import torch

        flag = torch.tensor([float(self.received is not None)], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum") > 0)
