"""The generation queue: one job at a time, latest job per client, bounded."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from distar.serve.queue import LatestPerClient, QueueFull, Superseded


class Blocking:
    """A job runner that records what ran, how many ran at once, and can hold a job until released."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.active = self.peak = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, job: str) -> str:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if job == "hold":
                self.started.set()
                assert self.release.wait(10)
            if job == "fail":
                raise RuntimeError("boom")
            time.sleep(0.002)
            return job.upper()
        finally:
            with self.lock:
                self.active -= 1
                self.ran.append(job)


def test_one_job_at_a_time_across_threads():
    runner = Blocking()
    queue = LatestPerClient(runner)
    results: dict[str, str] = {}

    def client(name: str) -> None:
        for i in range(5):
            job = f"{name}{i}"
            results[job] = queue.submit(job, client=name).result(timeout=10)

    threads = [threading.Thread(target=client, args=(c,)) for c in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.close()
    assert runner.peak == 1
    assert results == {j: j.upper() for j in results} and len(results) == 15


def test_newer_job_of_a_client_replaces_its_queued_one_in_place():
    runner = Blocking()
    queue = LatestPerClient(runner)
    running = queue.submit("hold", client="x")
    assert runner.started.wait(10)
    first = queue.submit("b1", client="b")
    other = queue.submit("c1", client="c")
    latest = queue.submit("b2", client="b")
    with pytest.raises(Superseded):
        first.result(timeout=1)
    assert queue.waiting == 2
    runner.release.set()
    assert (running.result(10), latest.result(10), other.result(10)) == ("HOLD", "B2", "C1")
    assert runner.ran == ["hold", "b2", "c1"]  # b2 kept b1's place, ahead of c1
    queue.close()


def test_anonymous_jobs_are_never_superseded_and_the_queue_is_bounded():
    runner = Blocking()
    queue = LatestPerClient(runner, max_pending=2)
    queue.submit("hold")
    assert runner.started.wait(10)
    waiting = [queue.submit("a"), queue.submit("b")]
    with pytest.raises(QueueFull):
        queue.submit("c")
    runner.release.set()
    assert [f.result(10) for f in waiting] == ["A", "B"]
    queue.close()


def test_errors_reach_the_caller_and_cancelled_jobs_are_skipped():
    runner = Blocking()
    queue = LatestPerClient(runner)
    queue.submit("hold")
    assert runner.started.wait(10)
    failing, cancelled, after = queue.submit("fail"), queue.submit("gone"), queue.submit("after")
    assert cancelled.cancel()
    runner.release.set()
    with pytest.raises(RuntimeError, match="boom"):
        failing.result(10)
    assert after.result(10) == "AFTER"
    with pytest.raises(CancelledError):
        cancelled.result(0)
    assert "gone" not in runner.ran and runner.ran[-1] == "after"
    queue.close()
