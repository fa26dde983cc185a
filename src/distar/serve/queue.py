"""One worker, many clients: jobs run one at a time, and only a client's latest queued job is kept.

The model is loaded once and every request goes through :class:`LatestPerClient`, so two browser tabs
typing at once never run two forward passes at the same time, and the queue holds at most one job
per client (at most ``max_pending`` in all), so memory does not grow with typing speed. A job that
is still waiting when the same client submits a newer one is dropped with :class:`Superseded`; the
newer job takes its place in line. The job that is already running always finishes.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable, Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class Superseded(Exception):
    """The job was replaced by a newer one from the same client before it started."""


class QueueFull(Exception):
    """``max_pending`` clients are already waiting."""


class LatestPerClient(Generic[J, R]):
    """Runs ``run(job)`` on one background thread, first come first served, latest job per client.

    ``submit`` returns a :class:`~concurrent.futures.Future`; a future cancelled before its job starts
    (e.g. the HTTP client went away) is skipped.
    """

    def __init__(self, run: Callable[[J], R], max_pending: int = 32) -> None:
        self._run = run
        self.max_pending = max_pending
        self._pending: OrderedDict[str, tuple[J, Future[R]]] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._anonymous = itertools.count()
        self._thread = threading.Thread(target=self._work, name="distar-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: J, client: str | None = None) -> Future[R]:
        """Queue ``job``; a waiting job of the same ``client`` is dropped (None: a client of its own)."""
        future: Future[R] = Future()
        key = f"\0{next(self._anonymous)}" if client is None else client
        with self._cond:
            if self._closed:
                raise RuntimeError("the generation queue is closed")
            for gone in [k for k, (_, f) in self._pending.items() if f.cancelled()]:  # their clients went away
                del self._pending[gone]
            replaced = self._pending.get(key)
            if replaced is None and len(self._pending) >= self.max_pending:
                raise QueueFull(f"{self.max_pending} requests are already waiting")
            self._pending[key] = (job, future)  # an existing key keeps its place in line
            self._cond.notify()
        if replaced is not None:
            replaced[1].set_exception(Superseded("superseded by a newer request from the same client"))
        return future

    @property
    def waiting(self) -> int:
        """Jobs queued, not yet started and not cancelled."""
        with self._cond:
            return sum(not f.cancelled() for _, f in self._pending.values())

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                _, (job, future) = self._pending.popitem(last=False)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._run(job))
            except BaseException as err:  # handed to the waiting request, never lost in the thread
                future.set_exception(err)

    def close(self) -> None:
        """Stop after the running job; waiting jobs are cancelled."""
        with self._cond:
            self._closed = True
            dropped = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        for _, future in dropped:
            future.cancel()
        self._thread.join()
