"""Errors shown to the user as one line, never a traceback: ``distar`` exits with status 2 on a
:class:`UserError` (or a :class:`~distar.config.ConfigError`), with status 1 on a
:class:`RunError`, a run that started and had to stop, with status 3 when the training monitor's
reward-hacking alarm stopped it (:class:`HackingAlarm`), and with :attr:`Preempted.status` for one
stopped by a signal."""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; printed as one line."""


class RunError(RuntimeError):
    """A run stopped for a reason reported in one line: non-finite steps, a failed checkpoint write."""

    #: The exit status of ``distar`` for this error.
    exit_code: int = 1


class HackingAlarm(RunError):
    """The training monitor's reward-hacking alarm stopped the run (``monitor.stop``) after a checkpoint."""

    exit_code = 3


class Cancelled(Exception):
    """Work stopped part-way because nobody waits for its result any more (e.g. a client went away)."""


class Preempted(RunError):
    """A run stopped by a signal (see :mod:`distar.train.preemption`); ``distar`` exits with ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = self.exit_code = status


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its class name when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
