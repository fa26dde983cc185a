"""The evaluation suite: benchmarks, metrics, cost, tables — the paper's Table 1 and Table 3 for any
image model, next to baselines.

``evaluate(models, benchmark, metrics, out_dir)`` generates every (prompt, seed) image with each
model, scores it with reward models (ImageReward, Aes, PickScore, CLIP, HPSv2), computes set metrics
(FID, seed diversity) and inference cost, and writes ``summary.md``/``summary.json``;
``run_eval(config)`` does it for an :class:`EvalConfig`, which is what ``distar eval`` runs.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name → submodule; imported on first use, so that reading a config (``distar.eval.config``)
#: does not load the metric models' libraries.
_HOMES = {
    "Benchmark": "benchmarks", "PromptItem": "benchmarks", "load_benchmark": "benchmarks",
    "Cost": "cost", "measure_cost": "cost",
    "Diversity": "diversity",
    "FID": "fid", "InceptionV3Features": "fid",
    "METRIC_NAMES": "metrics", "LazyMetric": "metrics", "SetMetric": "metrics", "metric_loaders": "metrics",
    "DiffusersModel": "models", "ModelSpec": "models", "parse_model_spec": "models",
    "ModelResult": "report", "Summary": "report",
    "EvalConfig": "config",
    "evaluate": "suite", "run_eval": "suite",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'distar.eval' has no attribute '{name}'")
    return getattr(importlib.import_module(f"distar.eval.{_HOMES[name]}"), name)


__all__ = [
    "FID",
    "METRIC_NAMES",
    "Benchmark",
    "Cost",
    "DiffusersModel",
    "Diversity",
    "EvalConfig",
    "InceptionV3Features",
    "LazyMetric",
    "ModelResult",
    "ModelSpec",
    "PromptItem",
    "SetMetric",
    "Summary",
    "evaluate",
    "load_benchmark",
    "measure_cost",
    "metric_loaders",
    "parse_model_spec",
    "run_eval",
]
