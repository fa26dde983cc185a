"""Training: Algorithm 1 of Diff-Instruct* (docs/math.md §7) for any :class:`distar.protocols.Backend`.

- :class:`TrainConfig` and its sections (:mod:`distar.train.config`);
- :class:`Trainer` (:mod:`distar.train.loop`): the accelerate loop, checkpoints, logging, sample grids;
- :func:`build_trainer` (:mod:`distar.train.build`): backend, reward and prompts from a config;
- :mod:`distar.train.algorithm`: the per-sample losses of the assistant and generator updates.

``Trainer`` and ``build_trainer`` are imported on first use (they pull in accelerate and diffusers).
"""

from typing import Any

from distar.train.config import (
    CheckpointConfig,
    DataConfig,
    EMAConfig,
    LoggingConfig,
    LoopConfig,
    OptimConfig,
    OptimizerConfig,
    MonitorConfig,
    SamplingConfig,
    TrainConfig,
)

_LAZY = {"Trainer": "distar.train.loop", "make_accelerator": "distar.train.loop", "build_trainer": "distar.train.build"}

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "EMAConfig",
    "LoggingConfig",
    "LoopConfig",
    "OptimConfig",
    "OptimizerConfig",
    "MonitorConfig",
    "SamplingConfig",
    "TrainConfig",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distar.train' has no attribute {name!r}")
