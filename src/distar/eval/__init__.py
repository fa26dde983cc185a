"""The evaluation suite: the paper's Table 1 and Table 3 for any image model, next to baselines.

``evaluate(models, benchmark, metrics, out_dir)`` generates every (prompt, seed) image with each
model, scores it with reward models (ImageReward, Aes, PickScore, CLIP, HPSv2), computes set metrics
(FID, seed diversity) and inference cost, and writes ``summary.md``/``summary.json``. The ``distar
eval`` command builds the same from command-line options.
"""

from distar.eval.benchmarks import Benchmark, PromptItem, load_benchmark
from distar.eval.cost import Cost, measure_cost
from distar.eval.diversity import Diversity
from distar.eval.fid import FID, InceptionV3Features
from distar.eval.metrics import METRIC_NAMES, LazyMetric, SetMetric, metric_loaders
from distar.eval.models import DiffusersModel, ModelSpec, parse_model_spec
from distar.eval.report import ModelResult, Summary
from distar.eval.suite import evaluate

__all__ = [
    "FID",
    "METRIC_NAMES",
    "Benchmark",
    "Cost",
    "DiffusersModel",
    "Diversity",
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
]
