"""Inference cost of an image model: seconds per 10 images after warm-up, and peak memory.

On CUDA, timings are bracketed by ``torch.cuda.synchronize()`` and memory is
``torch.cuda.max_memory_allocated`` over the warm-up and timed batches (everything resident on the
GPU: the model's weights, its activations, and any other model kept loaded). On CPU, memory is the
peak resident set size of the process, sampled while generating.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import psutil
import torch

from distar.protocols import ImageModel

_GIB = 2**30


@dataclass
class Cost:
    """Measured generation cost of one model."""

    seconds_per_10_images: float
    mean_seconds_per_10_images: float
    peak_memory_gib: float
    #: "cuda_max_allocated" or "process_peak_rss".
    memory_kind: str
    images_timed: int
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _PeakRSS:
    """Samples the process's resident set size in a background thread; ``peak`` in bytes."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> "_PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_cost(model: ImageModel, prompts: Sequence[str], batch_size: int, num_images: int = 10) -> Cost:
    """Time ``num_images`` images (prompts cycled, seeds 10⁶ + i) in batches of ``batch_size``,
    after one untimed warm-up batch; the images are discarded.

    Seconds per 10 images = 10 × the median over timed batches of (batch seconds / batch size): the
    median keeps a stall caused by another process on a shared machine out of the figure; the
    plain mean (total time / images) is kept as ``mean_seconds_per_10_images``.
    """
    if num_images < 1 or not prompts:
        raise ValueError("measure_cost needs at least one prompt and one image")
    batch_size = min(batch_size, num_images)
    chosen = [prompts[i % len(prompts)] for i in range(num_images)]
    seeds = [1_000_000 + i for i in range(num_images)]
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, sizes = [], []
    with _PeakRSS() as rss:
        model.generate_images(chosen[:batch_size], seeds[:batch_size])  # warm-up (and lazy loading)
        for start in range(0, num_images, batch_size):
            batch_prompts, batch_seeds = chosen[start : start + batch_size], seeds[start : start + batch_size]
            _sync()
            begin = time.perf_counter()
            model.generate_images(batch_prompts, batch_seeds)
            _sync()
            seconds.append(time.perf_counter() - begin)
            sizes.append(len(batch_prompts))
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    else:
        peak, kind = rss.peak, "process_peak_rss"
    median = statistics.median(t / n for t, n in zip(seconds, sizes))
    return Cost(10.0 * median, 10.0 * sum(seconds) / num_images, peak / _GIB, kind, num_images, batch_size)
