"""``evaluate``: generate a benchmark's images with each model, score them, and write the tables;
``run_eval``: the same for an :class:`~distar.eval.config.EvalConfig` (what ``distar eval`` runs).

The results folder is the state, so a killed run resumes where it stopped::

    OUT/<model>/images/<idx>_s<seed>.png
    OUT/<model>/scores.jsonl         per-image records: prompt, group, seed, image path, metric values
    OUT/<model>/cost.json            seconds per 10 images and peak memory, measured once
    OUT/<model>/set_metrics.json     FID / diversity, reused while the image set is unchanged
    OUT/<model>/grid.png, OUT/compare.png, OUT/summary.json, OUT/summary.md

Phases: (1) per model: cost measurement, then every missing image (the model is unloaded after);
(2) per per-image metric: score every image that lacks it (the metric model is freed after);
(3) set metrics; (4) summary. A record line with ``"new": true`` starts an image's record afresh
(written when the image is generated); later lines add metric values.

Given a :class:`~distar.train.preemption.StopSignals`, a stop signal ends the run after the batch in
progress (of images or of scores) is written, with :class:`~distar.errors.Preempted` (exit 75): a rerun
continues from the results folder as after a kill, and ends with the scores of an uninterrupted run.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import warnings
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from distar import runstate
from distar.config import ConfigError
from distar.errors import RunError, UserError, first_line
from distar.eval.benchmarks import Benchmark, PromptItem, load_benchmark
from distar.eval.config import EvalConfig
from distar.eval.cost import measure_cost
from distar.eval.metrics import LazyMetric, SetMetric, as_lazy, evaluation_inputs, metric_loaders
from distar.inference.models import DiffusersModel, default_device
from distar.eval.report import ModelResult, Summary, save_grid
from distar.io import load_image, png_bytes
from distar.protocols import ImageModel
from distar.rewards import Reward
from distar.runtime import configure_threads, environment, report_threads, stored_parameters
from distar.train.preemption import StopSignals

Key = tuple[int, int]  # (prompt index, seed)


class EvalWarning(UserWarning):
    """An image, prompt or score was skipped; the summary lists it too."""


class ModelFiles:
    """The files of one model in the results folder."""

    def __init__(self, out_dir: Path, name: str) -> None:
        self.dir = out_dir / name
        self.images = self.dir / "images"
        self.scores = self.dir / "scores.jsonl"
        self.log = runstate.JsonlLog(self.scores, accept=_is_record)
        self.cost = self.dir / "cost.json"
        self.set_metrics = self.dir / "set_metrics.json"
        self.images.mkdir(parents=True, exist_ok=True)

    def image(self, key: Key) -> Path:
        return self.images / f"{key[0]:05d}_s{key[1]}.png"

    def read_records(self) -> dict[Key, dict[str, Any]]:
        """Merged records by (index, seed). A line that is not a record (torn by a kill, not UTF-8, an index
        or seed that is not a non-negative integer) is ignored with a warning, and so is a score that is not
        a finite number (or null): what it held is made or scored again."""
        records: dict[Key, dict[str, Any]] = {}
        for number, _, row in self.log.numbered():
            if row is None:
                warnings.warn(f"{self.scores}: ignoring unreadable line {number}", EvalWarning, stacklevel=2)
                continue
            for name in [k for k, v in row.items() if k not in RECORD_TEXT and not _is_score(v)]:
                message = f"{self.scores}: line {number}: {name} is not a finite number, scored again"
                warnings.warn(message, EvalWarning, stacklevel=2)
                del row[name]
            key = (row["index"], row["seed"])
            if row.pop("new", False) or key not in records:
                records[key] = row
            else:
                records[key].update(row)
        return records

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        self.log.append(rows, sync=True)


#: Record fields that are text (the others are scores); ``group`` may be null.
RECORD_TEXT = {"prompt": (str,), "group": (str, type(None)), "image": (str,), "new": (bool,)}


def _is_record(row: dict[str, Any]) -> bool:
    """Whether a scores.jsonl object is a record (see :meth:`ModelFiles.read_records`)."""
    if not all(type(row.get(k)) is int and row[k] >= 0 for k in ("index", "seed")):
        return False
    return all(isinstance(row[k], kinds) for k, kinds in RECORD_TEXT.items() if k in row)


def _is_score(value: Any) -> bool:
    """A stored score: a finite number, or null (a non-finite score, reported when it was made)."""
    return value is None or (type(value) in (int, float) and math.isfinite(value))


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file of the results folder; None when it is missing or damaged (made again)."""
    try:
        value = runstate.read_json(path)
    except UserError:
        return None
    return value if isinstance(value, dict) else None


def _is_valid_image(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (OSError, SyntaxError):
        return False


class _Run:
    """State shared by the phases of one :func:`evaluate` call."""

    def __init__(
        self,
        out_dir: Path,
        benchmark: Benchmark,
        seeds: Sequence[int],
        batch_size: int,
        stop: StopSignals | None,
        on_point: Callable[[str, int], None],
    ) -> None:
        self.out_dir = out_dir
        self.stop, self.on_point = stop, on_point
        self.batches_done = 0
        self.benchmark = benchmark
        self.batch_size = batch_size
        self.jobs: list[tuple[PromptItem, int]] = [(item, s) for item in benchmark.items for s in seeds]
        self.failures: dict[str, list[str]] = defaultdict(list)

    def batch_done(self, what: str) -> None:
        """After a batch is written: stop here (:class:`~distar.errors.Preempted`) if a stop signal came."""
        self.batches_done += 1
        if self.stop is not None and self.stop.received is not None:
            raise self.stop.preempted(
                f"after {what}: the results so far are kept in {self.out_dir} (run the same command again to continue)"
            )
        self.on_point("eval-batch", self.batches_done)

    def fail(self, model: str, message: str) -> None:
        warnings.warn(f"{model}: {message}", EvalWarning, stacklevel=3)
        self.failures[model].append(message)

    def record(self, files: ModelFiles, item: PromptItem, seed: int) -> dict[str, Any]:
        return {
            "index": item.index,
            "seed": seed,
            "prompt": item.prompt,
            "group": item.group,
            "image": str(files.image((item.index, seed)).relative_to(self.out_dir)),
        }

    # Phase 1 -------------------------------------------------------------------------------
    def generate(self, model: ImageModel, files: ModelFiles, timing_images: int) -> None:
        records = files.read_records()
        todo, known = [], []
        for item, seed in self.jobs:
            path, record = files.image((item.index, seed)), records.get((item.index, seed), {})
            if record.get("prompt", item.prompt) != item.prompt:
                raise ConfigError(
                    f"{path} was made for the prompt {record['prompt']!r}, not {item.prompt!r}: "
                    "this results folder belongs to another benchmark; use a new --out folder"
                )
            if path.is_file() and _is_valid_image(path):
                if "image" not in record:
                    known.append(self.record(files, item, seed) | {"new": True})
                continue
            if path.is_file():
                self.fail(model.name, f"corrupt image {path.name}, generated again")
            todo.append((item, seed))
        if known:  # images written just before a kill, without their record
            files.append(known)
        if timing_images > 0 and _read_json(files.cost) is None:
            try:
                cost = measure_cost(model, [item.prompt for item, _ in self.jobs], self.batch_size, timing_images)
                runstate.write_json(files.cost, cost.to_dict())
            except (ConfigError, UserError, FileNotFoundError):  # the model cannot be loaded
                raise
            except Exception as err:  # the images below report what fails
                self.fail(model.name, f"cost not measured ({err.__class__.__name__}: {first_line(err)})")
        if not todo:
            return
        failed = 0
        with tqdm(total=len(todo), desc=f"generate {model.name}", unit="img", leave=False) as bar:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                failed += self._generate_batch(model, files, batch)
                bar.update(len(batch))
                self.batch_done(f"{start + len(batch)} of {len(todo)} images of {model.name}")
        if failed == len(todo):
            raise RunError(f"model {model.name} produced no image; first problem: {self.failures[model.name][-1]}")

    def _generate_batch(self, model: ImageModel, files: ModelFiles, batch: list[tuple[PromptItem, int]]) -> int:
        """Generate, check and save one batch (one by one if the batch fails); the number failed."""
        try:
            images = model.generate_images([item.prompt for item, _ in batch], [seed for _, seed in batch])
        except (ConfigError, UserError, FileNotFoundError):  # the model cannot be loaded: no image can be made
            raise
        except Exception as err:  # a failing batch is retried image by image, then reported
            if len(batch) > 1:
                return sum(self._generate_batch(model, files, [job]) for job in batch)
            item, seed = batch[0]
            self.fail(model.name, f"prompt {item.index} seed {seed}: generation failed ({err.__class__.__name__}: {err})")
            return 1
        if images.ndim != 4 or images.shape[0] != len(batch) or images.shape[1] != 3:
            raise ValueError(f"{model.name}: expected images ({len(batch)}, 3, H, W), got {tuple(images.shape)}")
        rows, failed = [], 0
        for (item, seed), image in zip(batch, images):
            if not torch.isfinite(image).all():
                self.fail(model.name, f"prompt {item.index} seed {seed}: non-finite pixels, skipped")
                failed += 1
                continue
            runstate.write_atomic(files.image((item.index, seed)), png_bytes(image))
            rows.append(self.record(files, item, seed) | {"new": True})
        files.append(rows)
        return failed

    # Phases 2 and 3 --------------------------------------------------------------------------
    def batches(self, files: ModelFiles, records: Sequence[dict[str, Any]], model: str) -> Iterator[tuple[Tensor, list[dict]]]:
        """Images from disk in batches with their records; unreadable images are reported and skipped."""
        for start in range(0, len(records), self.batch_size):
            images, kept = [], []
            for record in records[start : start + self.batch_size]:
                try:
                    images.append(load_image(self.out_dir / record["image"]))
                    kept.append(record)
                except UserError:
                    self.fail(model, f"unreadable image {record['image']}, skipped")
            if kept:
                yield torch.stack(images), kept

    def present(self, files: ModelFiles) -> list[dict[str, Any]]:
        """Records of this benchmark's jobs whose image exists, in job order."""
        records = files.read_records()
        found = [records.get((item.index, seed), {}) for item, seed in self.jobs]
        return [record for record in found if "image" in record]

    def score(self, metric: LazyMetric, models: Sequence[ImageModel]) -> None:
        pending = {}
        for model in models:
            files = ModelFiles(self.out_dir, model.name)
            todo = [r for r in self.present(files) if metric.name not in r]
            if todo:
                pending[model.name] = (files, todo)
        if not pending:
            return
        reward = metric.load()
        if not isinstance(reward, Reward):
            raise TypeError(f"metric {metric.name}: expected a Reward, got {type(reward).__name__}")
        device = next((p.device for p in reward.parameters()), torch.device("cpu"))
        for name, (files, todo) in pending.items():
            with tqdm(total=len(todo), desc=f"{metric.name} {name}", unit="img", leave=False) as bar:
                for images, records in self.batches(files, todo, name):
                    values = _scores(reward, images, [r["prompt"] for r in records], self.batch_size, device)
                    rows = []
                    for record, value in zip(records, values.tolist()):
                        if not np.isfinite(value):
                            self.fail(name, f"{metric.name}: non-finite score for {record['image']}")
                            value = None
                        rows.append({"index": record["index"], "seed": record["seed"], metric.name: value})
                    files.append(rows)
                    bar.update(len(records))
                    self.batch_done(f"{metric.name} scores of {bar.n} of {len(todo)} images of {name}")
        del reward
        _free_memory()

    def set_metric(self, metric: LazyMetric, models: Sequence[ImageModel]) -> None:
        loaded: SetMetric | None = None
        for model in models:
            files = ModelFiles(self.out_dir, model.name)
            records = self.present(files)
            digest = hashlib.sha256(json.dumps([(r["index"], r["seed"]) for r in records]).encode()).hexdigest()[:16]
            cached = _read_json(files.set_metrics) or {}
            entry = cached.get(metric.name)
            done = isinstance(entry, dict) and (entry.get("images"), entry.get("signature")) == (digest, metric.signature)
            if metric.signature is not None and done:
                continue
            if loaded is None:
                loaded = metric.load()  # type: ignore[assignment]
            try:
                values = loaded.compute(self.batches(files, records, model.name))  # type: ignore[union-attr]
            except ValueError as err:
                self.fail(model.name, f"{metric.name}: {err}")
                continue
            cached[metric.name] = {"images": digest, "signature": metric.signature, "values": values}
            runstate.write_json(files.set_metrics, cached)
            self.batch_done(f"{metric.name} of {model.name}")
        del loaded
        _free_memory()

    # Phase 4 ------------------------------------------------------------------------------------
    def result(self, model: ImageModel, metrics: Sequence[LazyMetric]) -> ModelResult:
        files = ModelFiles(self.out_dir, model.name)
        records = self.present(files)
        result = ModelResult(model.name, len(records), failures=list(self.failures[model.name]))
        if len(records) < len(self.jobs):
            result.failures.append(f"{len(self.jobs) - len(records)} of {len(self.jobs)} images missing")
        result.cost = _read_json(files.cost)
        describe = getattr(model, "describe", None)
        result.sampling = describe() if callable(describe) else {}
        set_values = _read_json(files.set_metrics) or {}
        for metric in metrics:
            if metric.kind == "set":
                values = set_values.get(metric.name, {}).get("values", {})
                result.scores[metric.name] = values.get(metric.name)
                result.extras.update({k: v for k, v in values.items() if k != metric.name})
                continue
            result.scores[metric.name] = _mean(r.get(metric.name) for r in records)
            if nulls := sum(metric.name in r and r[metric.name] is None for r in records):
                result.failures.append(f"{metric.name}: {nulls} non-finite score(s) left out of the mean")
            if self.benchmark.group_kind:
                by_group = defaultdict(list)
                for r in records:
                    by_group[r.get("group")].append(r.get(metric.name))
                for group, values in by_group.items():
                    result.groups.setdefault(str(group), {})[metric.name] = _mean(values)
        return result

    def grids(self, models: Sequence[ImageModel], grid_prompts: int, seeds: Sequence[int]) -> None:
        items = _spread(self.benchmark, grid_prompts)
        for model in models:
            files = ModelFiles(self.out_dir, model.name)
            rows = [[_existing(files.image((item.index, s))) for s in seeds[:4]] for item in items]
            save_grid(rows, files.dir / "grid.png")
        rows = [[_existing(ModelFiles(self.out_dir, m.name).image((item.index, seeds[0]))) for m in models] for item in items]
        save_grid(rows, self.out_dir / "compare.png")


@torch.no_grad()
def _scores(reward: Reward, images: Tensor, prompts: list[str], size: int, device: torch.device) -> Tensor:
    """``reward``'s scores of ``images`` (float32, CPU), computed in one batch of exactly ``size``, the
    last image repeated to fill it. Batched float32 kernels make a score depend on the batch's size
    (not, as measured, on the other images in it or on its place), so an image scores the same whatever
    shares its batch: in a resumed, repaired or extended run as in a fresh one."""
    count, fill = len(prompts), size - len(prompts)
    if fill > 0:
        images = torch.cat([images, images[-1:].expand(fill, *images.shape[1:])])
        prompts = prompts + [prompts[-1]] * fill
    values = reward.score(evaluation_inputs(images, reward).to(device), prompts)
    return values[:count].float().cpu()


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _spread(benchmark: Benchmark, n: int) -> list[PromptItem]:
    """``n`` prompts spread over the benchmark (every group represented when there are groups)."""
    items = benchmark.items
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(n - 1, 1))] for i in range(n)]


def _mean(values: Any) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate(
    models: Sequence[ImageModel],
    benchmark: Benchmark,
    metrics: Sequence[Reward | SetMetric | LazyMetric],
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    batch_size: int = 4,
    timing_images: int = 10,
    grid_prompts: int = 8,
    stop: StopSignals | None = None,
    on_point: Callable[[str, int], None] = lambda point, n: None,
) -> Summary:
    """Evaluate ``models`` on ``benchmark`` with ``metrics``; write and return the :class:`Summary`.

    Every prompt is generated once per seed. ``metrics`` are built reward/set metrics or
    :class:`LazyMetric` loaders (see :func:`distar.eval.metrics.metric_loaders`). Models with an
    ``unload()`` method are unloaded after generating, and cost is measured on ``timing_images``
    extra images (0 skips it). Re-running with the same folder resumes: finished images, scores and
    costs are not recomputed, also when prompts or seeds are added. With ``stop``, a stop signal ends
    the run after the batch in progress (module docstring). ``on_point("eval-batch", n)`` runs after the
    n-th batch is written (the tests' fault hook, :class:`~distar.train.callbacks.FaultHook`).
    """
    if not models:
        raise ConfigError("no models to evaluate")
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"model name '{duplicates[0]}' is used twice; give each model a distinct name")
    if not benchmark.items:
        raise ConfigError(f"benchmark {benchmark.name} has no prompts")
    if batch_size < 1:
        raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lazy = [as_lazy(m) for m in metrics]
    run = _Run(out, benchmark, list(seeds), batch_size, stop, on_point)
    for model in models:
        run.generate(model, ModelFiles(out, model.name), timing_images)
        unload = getattr(model, "unload", None)
        if callable(unload):
            unload()
    for metric in lazy:
        if metric.kind == "image":
            run.score(metric, models)
        else:
            run.set_metric(metric, models)
    summary = Summary(
        benchmark=benchmark.name,
        source=benchmark.source,
        prompts=len(benchmark.items),
        seeds=list(seeds),
        metrics=[m.name for m in lazy],
        models=[run.result(model, lazy) for model in models],
        group_kind=benchmark.group_kind,
        group_titles=list(benchmark.group_titles),
        environment=environment(),
    )
    summary.write(out)
    run.grids(models, grid_prompts, list(seeds))
    return summary


def run_eval(
    config: EvalConfig,
    *,
    threads: int | None = None,
    stop: StopSignals | None = None,
    on_point: Callable[[str, int], None] = lambda point, n: None,
) -> Summary:
    """Load the benchmark, models and metrics of ``config`` and :func:`~distar.eval.suite.evaluate`.

    Once the inputs are checked, the torch thread count is chosen (``threads``, else by the largest
    model's stored size: :func:`~distar.runtime.configure_threads`) and printed on stderr. ``stop`` and
    ``on_point``: see :func:`evaluate`."""
    if not config.models:
        raise ConfigError("no models given (--model PATH)")
    device = config.device or default_device()
    benchmark = load_benchmark(config.benchmark, config.benchmark_path).subset(config.num_images)
    metrics = metric_loaders(
        config.metrics,
        paths=config.metric_paths,
        options=config.metric_options,
        device=device,
        dtype=config.metric_dtype,
        fid_reference=config.fid_reference,
        fid_resolution=config.fid_resolution,
        local_files_only=config.local_files_only,
    )
    models = [DiffusersModel(replace(spec, device=spec.device or device)) for spec in config.models]
    sizes = [stored_parameters(spec.path) for spec in config.models]
    parameters = None if None in sizes else max(sizes)
    report_threads(configure_threads(threads, parameters=parameters, device=device), "eval")
    return evaluate(
        models,
        benchmark,
        metrics,
        config.out_dir,
        seeds=config.seeds,
        batch_size=config.batch_size,
        timing_images=config.timing_images,
        grid_prompts=config.grid_prompts,
        stop=stop,
        on_point=on_point,
    )

