"""Training: Algorithm 1 of Diff-Instruct* (docs/math.md §7) for any :class:`distar.protocols.Backend`.

- :class:`TrainConfig` and its sections (:mod:`distar.train.config`);
- :class:`Trainer` (:mod:`distar.train.loop`): the accelerate loop of Algorithm 1; beside it its
  accelerator (:mod:`~distar.train.setup`), records and trackers (:mod:`~distar.train.tracking`), sample
  grids and monitor passes (:mod:`~distar.train.samples`), checkpoint state (:mod:`~distar.train.state`)
  and numerics guard (:mod:`~distar.train.guard`);
- :class:`Callback` (:mod:`distar.train.callbacks`): code run at named moments of a run;
- :func:`build_trainer` (:mod:`distar.train.build`): backend, reward and prompts from a config;
- :mod:`distar.train.algorithm`: the per-sample losses of the assistant and generator updates.

``Trainer``, ``build_trainer``, ``make_accelerator`` and ``Callback`` are imported on first use (they pull
in accelerate and diffusers).
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

_LAZY = {
    "Trainer": "distar.train.loop",
    "make_accelerator": "distar.train.setup",
    "build_trainer": "distar.train.build",
    "Callback": "distar.train.callbacks",
}

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
