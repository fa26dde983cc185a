"""The training monitor: is a reward gain real? (docs/monitor.md)

Every ``monitor.every`` steps, and at step 0, the generator (and its EMA) makes images for a fixed set
of held-out prompts at fixed seeds, from noise drawn once. For each image the monitor scores:

- ``reward/<name>``: each term of the training reward, separately;
- ``judge/<name>``: reward models that are not trained on (``monitor.judges``);
- ``metric/<name>``: further measurements that nothing selects on (a world's ground truth);
- ``diversity``: mean pairwise cosine distance of image features across the seeds of a prompt;
- ``prompt_diversity``: the same across the prompts of one seed (per prompt: its mean distance to the others);
- ``drift``: cosine distance of each image's features to the reference's own multi-step image of the
  same prompt and noise (made once, cached in the run folder).

Every figure is a mean over the held-out prompts (a prompt's value is its mean over seeds) with their
spread. Changes are tested against step 0 as paired differences over prompts: a change is
significant when |mean Δ| > ``monitor.z`` standard errors.

**Alarm**: the training reward rose significantly while a watched figure (``monitor.watch``: the
judges, the diversities, the drift, the metrics) moved significantly the wrong way, at
``monitor.patience`` monitored steps in a row. **Selection** (``monitor.select``): ``guarded`` = the
highest training reward among the steps where no watched figure is significantly worse than at step
0; or a judge's name = its highest mean. The selected step's weights are kept as ``best/``.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from distar.config import ConfigError
from distar.io import read_prompts, write_atomic
from distar.runstate import save_safetensors
from distar.rewards.base import Reward, WeightedReward
from distar.train.checkpoint import BEST_DIR
from distar.train.config import MonitorConfig
from distar.train.logs import JsonlLog
from distar.train.runfolder import record_written

logger = logging.getLogger(__name__)

MONITOR_FILE = "monitor.jsonl"
MONITOR_DIR = "monitor"
CURVES_FILE = "monitor.png"
GRID_FILE = "monitor_grid.png"

#: Which way is worse for each watched group (−1: a fall is worse; +1: a rise is worse).
WORSE = {"judge": -1, "metric": -1, "diversity": -1, "prompt_diversity": -1, "drift": +1}


@runtime_checkable
class ImageEmbedder(Protocol):
    """A model that maps images (B, 3, H, W) in [0, 1] to (B, D) features (the CLIP-type rewards)."""

    def image_embeddings(self, images: Tensor) -> Tensor: ...


class RowsRemoved(Sequence[str]):
    """``prompts`` without the rows ``removed``, by index arithmetic: a lazy table stays lazy."""

    def __init__(self, prompts: Sequence[str], removed: Sequence[int]) -> None:
        self.prompts, self.removed = prompts, sorted(set(removed))

    def __len__(self) -> int:
        return len(self.prompts) - len(self.removed)

    def __getitem__(self, index: int | slice) -> str | list[str]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = index
        while True:  # the row whose count of kept rows before it is ``index``
            shifted = index + bisect.bisect_right(self.removed, row)
            if shifted == row:
                return self.prompts[row]
            row = shifted


def held_out_split(prompts: Sequence[str], config: MonitorConfig, seed: int) -> tuple[Sequence[str], list[str]]:
    """(training prompts, held-out prompts): a prompt file, or the prompts of ``config.prompts`` rows
    drawn with ``seed`` and removed from training (every row of those prompts, for an in-memory list).
    Empty held-out set when there are too few prompts to spare (fewer than 4 per held-out one)."""
    if isinstance(config.prompts, str):
        return prompts, list(dict.fromkeys(read_prompts(config.prompts, None)))
    distinct = len(set(prompts)) if isinstance(prompts, list) else len(prompts)
    if distinct < 4 * config.prompts:
        return prompts, []
    rng, rows, held = random.Random(seed), set(), {}
    while len(held) < config.prompts:  # rows until that many distinct prompts
        row = rng.randrange(len(prompts))
        if row not in rows:
            rows.add(row)
            held.setdefault(prompts[row], None)
    if isinstance(prompts, list):
        rows = {i for i, p in enumerate(prompts) if p in held}
    return RowsRemoved(prompts, sorted(rows)), list(held)


def paired_change(now: Sequence[float], start: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error) over prompts of the paired differences now − start (NaNs skipped)."""
    deltas = [a - b for a, b in zip(now, start) if math.isfinite(a) and math.isfinite(b)]
    if len(deltas) < 2:
        return (deltas[0] if deltas else math.nan), math.nan
    mean = sum(deltas) / len(deltas)
    var = sum((d - mean) ** 2 for d in deltas) / (len(deltas) - 1)
    return mean, math.sqrt(var / len(deltas))


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _nansd(values: Sequence[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    if len(kept) < 2:
        return math.nan
    mean = sum(kept) / len(kept)
    return math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))


def _to_json(obj: Any) -> Any:
    """Nested floats as strict JSON allows them: NaN and ±inf become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj


def _from_json(obj: Any) -> Any:
    """The inverse of :func:`_to_json` for numbers: null becomes NaN."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


@dataclass
class Verdict:
    """What one monitored step says: significant changes from step 0, the alarm, the selection."""

    rose: dict[str, float]  # figure → change in standard errors, for significant changes the wrong way
    reward_z: float
    alarm: bool
    eligible: bool
    score: float


class Scorer:
    """Per-image figures of a set of images (training reward terms, judges, metrics, features)."""

    def __init__(
        self,
        reward: Reward | None,
        judges: Sequence[Reward],
        metrics: Sequence[Reward],
        batch_size: int,
    ) -> None:
        terms: list[tuple[str, Reward]] = []
        if isinstance(reward, WeightedReward):
            terms = [(f"reward/{r.name}", r) for r in reward.rewards]
        elif reward is not None:
            terms = [(f"reward/{reward.name}", reward)]
        self.reward_weights = reward.weights if isinstance(reward, WeightedReward) else [1.0] * len(terms)
        self.models = terms + [(f"judge/{j.name}", j) for j in judges] + [(f"metric/{m.name}", m) for m in metrics]
        names = [n for n, _ in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"monitor: two figures share a name ({', '.join(names)}): give the judges distinct models")
        embedders = [m for _, m in self.models if isinstance(m, ImageEmbedder)]
        self.embedder: ImageEmbedder | None = embedders[0] if embedders else None
        self.batch_size = batch_size

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Unit-norm image features: the first CLIP-type judge or reward, else 16×16 pixels."""
        out = []
        for chunk in images.split(self.batch_size):
            if self.embedder is not None:
                device = next(iter(self.embedder.parameters())).device  # type: ignore[attr-defined]
                out.append(self.embedder.image_embeddings(chunk.to(device)).float().cpu())
            else:
                out.append(F.interpolate(chunk.float(), size=(16, 16), mode="area").flatten(1))
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def scores(self, images: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        """(N,) scores per figure; ``reward`` is the weighted training reward when there are terms."""
        out: dict[str, Tensor] = {}
        for name, model in self.models:
            device = next(iter(model.parameters()), torch.empty(0)).device
            values = [
                model.score(chunk.to(device), list(prompts[i : i + self.batch_size])).float().cpu()
                for i, chunk in zip(range(0, len(prompts), self.batch_size), images.split(self.batch_size))
            ]
            out[name] = torch.cat(values)
        rewards = [(w, out[n]) for w, (n, _) in zip(self.reward_weights, self.models) if n.startswith("reward/")]
        if rewards:
            out["reward"] = sum(w * v for w, v in rewards)
        return out


def per_prompt_figures(
    scores: dict[str, Tensor], features: Tensor, reference: Tensor | None, n_prompts: int, n_seeds: int
) -> dict[str, list[float]]:
    """Each figure's value per held-out prompt; images are prompt-major (prompt p, seed s at p·S + s)."""
    out = {name: values.view(n_prompts, n_seeds).nanmean(1).tolist() for name, values in scores.items()}
    f = features.view(n_prompts, n_seeds, -1)
    if n_seeds >= 2:
        gram = torch.einsum("psd,pqd->psq", f, f)
        off = ~torch.eye(n_seeds, dtype=torch.bool)
        out["diversity"] = (1 - gram[:, off]).mean(1).tolist()
    if n_prompts >= 2:
        gram = torch.einsum("psd,qsd->spq", f, f)  # per seed, prompt × prompt
        off = ~torch.eye(n_prompts, dtype=torch.bool)
        out["prompt_diversity"] = torch.stack([(1 - g[off].view(n_prompts, n_prompts - 1)).mean(1) for g in gram]).mean(0).tolist()
    if reference is not None:
        out["drift"] = (1 - (f * reference.view(n_prompts, n_seeds, -1)).sum(-1)).mean(1).tolist()
    return out


class Monitor:
    """Held-out images, their figures, the alarm and the selection, for one run (module docstring).

    The trainer calls :meth:`record` at every monitored step with the images it made; only the main
    process scores and writes. ``monitor.jsonl`` holds one line per (step, model), and the decision
    state (the start, the best step, the alarm streak) is rebuilt from it on resume.
    """

    def __init__(
        self,
        config: MonitorConfig,
        *,
        output_dir: Path,
        prompts: list[str],
        reward: Reward | None,
        judges: Sequence[Reward],
        metrics: Sequence[Reward],
    ) -> None:
        self.config = config
        self.output_dir = output_dir
        self.prompts = prompts
        self.seeds = list(config.seeds)
        self.scorer = Scorer(reward, judges, metrics, config.batch_size)
        self.log = JsonlLog(output_dir / MONITOR_FILE)
        self.has_reward = reward is not None
        watched = {"judges": ("judge/",), "metrics": ("metric/",), "diversity": ("diversity", "prompt_diversity"), "drift": ("drift",)}
        self._watch_prefixes = tuple(prefix for w in config.watch for prefix in watched[w])
        self.reference_features: Tensor | None = None
        self.state: dict[str, Any] = {}
        names = [spec.name for spec in config.judges]
        self.select_figure = (
            f"judge/{judges[names.index(config.select)].name}" if config.select in names and judges else "reward"
        )

    # ------------------------------------------------------------------ inputs

    @property
    def pairs(self) -> tuple[list[str], list[int]]:
        """Prompts and seeds of every held-out image, prompt-major."""
        return [p for p in self.prompts for _ in self.seeds], [s for _ in self.prompts for s in self.seeds]

    def set_reference(self, images: Tensor) -> None:
        """Features of the reference's own images of the held-out pairs (for the drift)."""
        self.reference_features = self.scorer.features(images)

    def watched(self, name: str) -> bool:
        return name.startswith(self._watch_prefixes)

    # ------------------------------------------------------------------ resume

    def resume(self, step: int) -> None:
        """Keep the records before this (re)start: those up to ``step`` when resuming a checkpoint at
        ``step`` > 0 (its own record was written before it), none when starting at step 0. Main process only."""
        record_written(self.output_dir, MONITOR_FILE, CURVES_FILE, GRID_FILE, f"{BEST_DIR}.json")
        self.log.truncate_after(step if step > 0 else -1)
        self.state = {}
        for record in self.records():
            self._remember(record)

    def records(self) -> list[dict[str, Any]]:
        """Every record of ``monitor.jsonl`` (a torn last line ignored), nulls read back as NaN."""
        return [_from_json(r) for r in self.log.read()]

    def _remember(self, record: dict[str, Any]) -> None:
        key = record["model"]
        if record["step"] == 0:
            self.state.setdefault("start", {})[key] = record["per_prompt"]
        if record.get("decides"):
            self.state["streak"] = record["streak"]
            self.state["alarms"] = record["alarms"]
            if record.get("best"):
                self.state["best"] = {"step": record["step"], "score": record["score"]}

    # ------------------------------------------------------------------ one pass

    def record(
        self, step: int, images: dict[str, Tensor], *, after_write: Callable[[], None] = lambda: None
    ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        """Score the images of each model (``generator``, ``ema``) and write their records, calling
        ``after_write`` after each. Returns the decision — ``best`` (whether this step is the new
        selection) and ``alarm`` (a line, or None) — and each model's mean of every figure."""
        prompts, _ = self.pairs
        decides = "ema" if "ema" in images else "generator"
        decision: dict[str, Any] = {"best": False, "alarm": None}
        means: dict[str, dict[str, float]] = {}
        for model, batch in images.items():
            batch = batch.float().clamp(0, 1)
            values = per_prompt_figures(
                self.scorer.scores(batch, prompts), self.scorer.features(batch), self.reference_features,
                len(self.prompts), len(self.seeds),
            )
            means[model] = {k: _nanmean(v) for k, v in values.items()}
            record: dict[str, Any] = {
                "step": step,
                "model": model,
                "mean": means[model],
                "sd": {k: _nansd(v) for k, v in values.items()},
                "per_prompt": values,
            }
            if step == 0:
                self.state.setdefault("start", {})[model] = values
            start = self.state["start"][model]
            record["change"] = {k: paired_change(v, start.get(k, [])) for k, v in values.items()}
            if model == decides:
                verdict = self._verdict(values, start)
                decision = self._decide(step, verdict)
                record.update(decides=True, **decision, score=verdict.score, streak=self.state["streak"],
                              alarms=self.state["alarms"], eligible=verdict.eligible, worse=verdict.rose)
            self.log.write([_to_json(record)])
            after_write()
        return decision, means

    def _verdict(self, values: dict[str, list[float]], start: dict[str, list[float]]) -> Verdict:
        z = self.config.z
        worse: dict[str, float] = {}
        for name, now in values.items():
            if not self.watched(name):
                continue
            mean, se = paired_change(now, start.get(name, []))
            sign = WORSE.get(name.split("/")[0], -1)
            if math.isfinite(se) and se > 0 and sign * mean / se > z:
                worse[name] = sign * mean / se
            elif math.isfinite(mean) and se == 0 and sign * mean > 0:
                worse[name] = math.inf
        reward_z = math.nan
        if self.has_reward:
            mean, se = paired_change(values["reward"], start["reward"])
            reward_z = mean / se if math.isfinite(se) and se > 0 else (math.inf if mean > 0 else 0.0)
        select = self.config.select
        if select == "guarded":
            score = _nanmean(values["reward"]) if self.has_reward else math.nan  # nothing to select without a reward
        else:
            score = _nanmean(values.get(self.select_figure, [math.nan]))
        return Verdict(
            rose=worse,
            reward_z=reward_z,
            alarm=bool(worse) and reward_z > z,
            eligible=not worse if select == "guarded" else True,
            score=score,
        )

    def _decide(self, step: int, verdict: Verdict) -> dict[str, Any]:
        state = self.state
        state["streak"] = state.get("streak", 0) + 1 if verdict.alarm else 0
        state.setdefault("alarms", [])
        alarm = None
        if state["streak"] == self.config.patience:  # fires once per spell of the condition
            moved = ", ".join(f"{k} {v:+.1f} SE" for k, v in sorted(verdict.rose.items(), key=lambda kv: -kv[1]))
            alarm = (
                f"step {step}: reward hacking alarm: the training reward rose {verdict.reward_z:+.1f} SE from step 0 "
                f"while {moved} moved the wrong way ({len(self.prompts)} held-out prompts, z > {self.config.z:g})"
            )
            state["alarms"] = [*state["alarms"], step]
        best = state.get("best")
        new_best = (
            self.config.select != "none"
            and verdict.eligible
            and math.isfinite(verdict.score)
            and (best is None or verdict.score > best["score"])
        )
        if new_best:
            state["best"] = {"step": step, "score": verdict.score}
        return {"best": new_best, "alarm": alarm}

    # ------------------------------------------------------------------ pictures

    def save_grid_images(self, step: int, images: Tensor) -> None:
        """Keep the first ``monitor.grid`` prompts' images of this step for the grid picture."""
        from distar.train.logs import image_grid, save_png

        n = min(self.config.grid, len(self.prompts)) * len(self.seeds)
        folder = self.output_dir / MONITOR_DIR
        folder.mkdir(parents=True, exist_ok=True)
        record_written(self.output_dir, f"{MONITOR_DIR}/step-{step:06d}.png")
        save_png(image_grid(images[:n].float().clamp(0, 1), rows=1), folder / f"step-{step:06d}.png")

    def draw(self) -> None:
        """``monitor.png`` (every curve, alarms and the selection marked) and ``monitor_grid.png``."""
        from distar.train.monitor_plots import draw_curves, draw_grid

        records = self.records()
        if not records:
            return
        best = self.state.get("best", {}).get("step")
        draw_curves(records, self.output_dir / CURVES_FILE, alarms=self.state.get("alarms", []), best=best,
                    watched=self.watched)
        draw_grid(self.output_dir / MONITOR_DIR, self.output_dir / GRID_FILE, best=best)

    def write_best(self, step: int) -> None:
        """``best.json``: which step the run folder's ``best/`` holds and why."""
        info = {"step": step, "select": self.config.select, "score": self.state["best"]["score"]}
        write_atomic(self.output_dir / f"{BEST_DIR}.json", (json.dumps(info, indent=1) + "\n").encode())


def load_monitor_models(config: MonitorConfig, device: torch.device) -> tuple[list[Reward], list[Reward]]:
    """The judges and metrics of ``config``, frozen on ``device``."""
    from distar.rewards import load_reward

    judges = [load_reward(spec, device=device) for spec in config.judges]
    metrics = [load_reward(spec, device=device) for spec in config.metrics]
    return judges, metrics


def reference_images(
    *,
    cache: Path,
    key: str,
    make: Callable[[], Tensor],
) -> Tensor:
    """The reference's images of the held-out pairs, read from ``cache`` when it was made for ``key``."""
    from safetensors.torch import load_file

    if cache.is_file():
        try:
            stored = load_file(str(cache))
            meta = json.loads((cache.with_suffix(".json")).read_text())
            if meta.get("key") == key:
                return stored["images"].float() / 255
        except (OSError, ValueError, KeyError):
            pass
    images = make()
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(cache, {"images": (images.clamp(0, 1) * 255).round().to(torch.uint8)})  # runs in parallel may share it
    write_atomic(cache.with_suffix(".json"), json.dumps({"key": key}).encode())
    return (images.clamp(0, 1) * 255).round() / 255
