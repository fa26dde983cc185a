"""Evaluation metrics by name, loaded lazily (one model in memory at a time).

Per-image metrics are the reward models of :mod:`distar.rewards`, scored without gradient in
batches on the reference evaluation path (:func:`evaluation_inputs`). Set metrics
(:class:`SetMetric`) need a whole set of images: ``"fid"`` (:class:`~distar.eval.fid.FID`) and
``"diversity"`` (:class:`~distar.eval.diversity.Diversity`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from distar.config import ConfigError
from distar.io import tiny_asset, to_uint8
from distar.rewards import REWARD_NAMES, TINY, Reward
from distar.rewards.preprocess import ImageTransform

SET_METRICS = ("fid", "diversity", "prompt_diversity")
METRIC_NAMES = (*REWARD_NAMES, *SET_METRICS)


@runtime_checkable
class SetMetric(Protocol):
    """A metric of a set of images: ``compute`` returns its value under ``name`` plus extra counts."""

    name: str

    def compute(self, batches: Iterable[tuple[Tensor, Sequence[dict]]]) -> dict[str, float]:
        """``batches`` yields images (B, 3, H, W) in [0, 1] with their records (prompt, index, seed...)."""
        ...


@dataclass(frozen=True)
class LazyMetric:
    """A metric known by name, built by ``load()`` only when there is something to score."""

    name: str
    kind: Literal["image", "set"]
    load: Callable[[], Reward | SetMetric]
    #: Identifies the configuration of a set metric: a stored result is reused only if it matches
    #: (None: never reused, e.g. for metric objects passed in directly).
    signature: str | None = None


def as_lazy(metric: Reward | SetMetric | LazyMetric) -> LazyMetric:
    """Wrap an already built metric object."""
    if isinstance(metric, LazyMetric):
        return metric
    if isinstance(metric, Reward):
        return LazyMetric(metric.name, "image", lambda: metric)
    if isinstance(metric, SetMetric):
        return LazyMetric(metric.name, "set", lambda: metric)
    raise TypeError(f"not a metric: {metric!r} (expected a Reward, a SetMetric or a LazyMetric)")


def evaluation_inputs(images: Tensor, reward: Reward) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] as the reference evaluation code feeds a reward model.

    The published scorers of the crop-mode models (PickScore, CLIP, ImageReward, aesthetic) resize
    the uint8 image with PIL bicubic (short side), then centre-crop. Doing that here hands the
    reward images already at its input size, so its own torch resize (the differentiable training
    path, metrics.md §8) is skipped and only normalisation remains. HPS resizes tensors in its
    reference code, which the reward already does; other rewards (and processors whose resize and
    crop sizes differ) get the images unchanged.
    """
    transform = getattr(reward, "transform", None)
    if not isinstance(transform, ImageTransform) or transform.mode != "crop":
        return images
    if transform.resize not in (None, transform.size):
        return images
    short = size = transform.size
    pixels = to_uint8(images)
    out = []
    for array in pixels:
        image = Image.fromarray(array)
        width, height = image.size
        scale = short / min(width, height)
        new = (short, int(height * scale)) if width <= height else (int(width * scale), short)
        image = image.resize(new, Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        out.append(np.asarray(image.crop((left, top, left + size, top + size))))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255).to(images.device)


def parse_metric_names(text: str | Sequence[str]) -> list[str]:
    """``"pickscore,clip"`` (or a list) → validated, de-duplicated names; reward plugins
    (:mod:`distar.rewards.plugins`) are per-image metrics under their own name."""
    from distar.rewards.spec import is_plugin_name

    items = [n.strip() for n in (text.split(",") if isinstance(text, str) else list(text))]
    names = list(dict.fromkeys(n if is_plugin_name(n) else n.lower() for n in items if n))
    unknown = [n for n in names if n not in METRIC_NAMES and not is_plugin_name(n)]
    if unknown:
        raise ConfigError(
            f"unknown metric '{unknown[0]}' (choose from {', '.join(METRIC_NAMES)}, "
            "or a reward plugin as module:Class or an installed entry point)"
        )
    if not names:
        raise ConfigError("no metrics given")
    return names


def metric_loaders(
    names: Sequence[str],
    *,
    paths: Mapping[str, str] | None = None,
    options: Mapping[str, dict[str, Any]] | None = None,
    device: torch.device | str = "cpu",
    dtype: str | None = None,
    fid_reference: str | None = None,
    fid_resolution: int | None = 512,
    local_files_only: bool = False,
) -> list[LazyMetric]:
    """Lazy loaders for metric ``names``; ``paths[name]`` is a model location (hub id, folder, file,
    or ``"tiny"`` for a tiny random model); ``paths["fid"]`` is the Inception torchscript file and
    ``paths["diversity"]`` (``paths["prompt_diversity"]``) the CLIP model whose image tower gives the
    diversity features (as for ``"clip"``; default ``openai/clip-vit-large-patch14``); ``options[name]``
    are the keyword arguments of a reward plugin's class."""
    paths = dict(paths or {})
    from distar.rewards.spec import is_plugin_name

    unknown = sorted(n for n in set(paths) - set(METRIC_NAMES) if not is_plugin_name(n))
    if unknown:
        raise ConfigError(f"--metric-path for unknown metric '{unknown[0]}'")
    plugin_paths = sorted(n for n in paths if is_plugin_name(n))
    if plugin_paths:
        raise ConfigError(f"--metric-path for reward plugin '{plugin_paths[0]}': plugins take metric_options, not a path")
    options = dict(options or {})
    not_plugins = sorted(n for n in options if not is_plugin_name(n))
    if not_plugins:
        raise ConfigError(f"metric_options: '{not_plugins[0]}' is not a reward plugin (options are for plugins only)")
    loaders = []
    for name in parse_metric_names(names):
        path = paths.get(name)
        if is_plugin_name(name):
            loaders.append(LazyMetric(name, "image", _plugin_loader(name, options.get(name, {}), device, dtype)))
        elif name in REWARD_NAMES:
            loaders.append(LazyMetric(name, "image", _reward_loader(name, path, device, dtype, local_files_only)))
        elif name == "fid":
            if fid_reference is None:
                raise ConfigError(
                    "metric 'fid' needs a reference: --fid-reference FOLDER (e.g. COCO-2014 val2014 images) "
                    "or a cached statistics .safetensors file"
                )
            if not Path(fid_reference).exists():  # checked now, not after hours of generation
                raise FileNotFoundError(f"FID reference not found: {fid_reference}")
            signature = json.dumps({"extractor": path, "reference": fid_reference, "resolution": fid_resolution})
            loaders.append(LazyMetric(name, "set", _fid_loader(path, fid_reference, fid_resolution, device), signature))
        else:
            signature = json.dumps({"features": path})
            across = "seeds" if name == "diversity" else "prompts"
            loaders.append(LazyMetric(name, "set", _diversity_loader(path, device, local_files_only, across), signature))
    return loaders


def _reward_loader(
    name: str, path: str | None, device: torch.device | str, dtype: str | None, local_files_only: bool
) -> Callable[[], Reward]:
    def load() -> Reward:
        from distar.rewards import load_reward

        return load_reward(name, path=path, device=device, dtype=dtype, local_files_only=local_files_only)

    return load


def _plugin_loader(
    name: str, options: dict[str, Any], device: torch.device | str, dtype: str | None
) -> Callable[[], Reward]:
    from distar.rewards import RewardSpec

    spec = RewardSpec(name, options=options)  # imports the plugin now: a broken one is refused before generation

    def load() -> Reward:
        from distar.rewards import load_reward

        return load_reward(spec, device=device, dtype=dtype)

    return load


def _fid_loader(
    path: str | None, reference: str, resolution: int | None, device: torch.device | str
) -> Callable[[], SetMetric]:
    def load() -> SetMetric:
        from distar.eval.fid import FID, InceptionV3Features

        extractor = InceptionV3Features(tiny_asset("inception") if path == TINY else path)
        return FID(extractor, reference, resolution=resolution, device=device)

    return load


def _diversity_loader(
    path: str | None, device: torch.device | str, local_files_only: bool, across: Literal["seeds", "prompts"]
) -> Callable[[], SetMetric]:
    def load() -> SetMetric:
        from distar.eval.diversity import Diversity
        from distar.rewards import load_reward

        clip = load_reward("clip", path=path, device=device, local_files_only=local_files_only)
        return Diversity(lambda images: clip.image_embeddings(evaluation_inputs(images, clip).to(device)), across)

    return load
