"""Runners for the harness tests, importable by the sweep's spawned workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def probe(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What the worker saw: its GPU pin, its torch and OpenMP thread counts, and its process id."""
    if data["x"] == data.get("fail"):
        raise ValueError(f"run x={data['x']} failed")
    return {
        "x": data["x"],
        "seed": data["seed"],
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "pid": os.getpid(),
    }
