"""Reward plugins: a :class:`~distar.rewards.base.Reward` subclass named in a config.

A plugin is named either ``package.module:Class`` or by a registered entry point of the group
``distar.rewards`` (``[project.entry-points."distar.rewards"] my-reward = "my_pkg.rewards:MyReward"``
in the plugin's ``pyproject.toml``, so that ``pip install`` makes ``name: my-reward`` work; a
built-in reward name wins over an entry point of the same name).
``rewards: [{name: "my_pkg.rewards:MyReward", weight: 1, options: {scale: 2}}]`` builds
``MyReward(scale=2)``. The class follows the :class:`~distar.rewards.base.Reward` contract: ``score``
takes images (B, 3, H, W) in [0, 1] and B prompts and returns (B,) scores, differentiable in the images
when it is trained on (:func:`probe_reward` checks that before training starts). docs/rewards-own.md
has a complete example.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

import torch

from distar.config import ConfigError
from distar.errors import first_line
from distar.rewards.base import Reward

#: Entry-point group under which installed packages register reward classes.
ENTRY_POINT_GROUP = "distar.rewards"


def registered_plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed reward plugins: entry-point name → entry point (group :data:`ENTRY_POINT_GROUP`)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def plugin_class(name: str) -> type[Reward]:
    """The class that ``module:Class`` or an entry point names, checked to be a :class:`Reward` subclass
    (one-line errors)."""
    if ":" not in name:
        entry = registered_plugins().get(name)
        if entry is None:
            raise ConfigError(f"reward plugin '{name}': no entry point of that name in group {ENTRY_POINT_GROUP}")
        try:
            cls: Any = entry.load()
        except Exception as err:  # the plugin's own import error, whatever it is, in one line
            raise ConfigError(f"reward plugin '{name}': cannot load {entry.value} ({first_line(err)})") from None
        return _checked(name, cls, entry.value)
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"reward plugin '{name}': write it as package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the plugin's own import error, whatever it is, in one line
        raise ConfigError(f"reward plugin '{name}': cannot import {module_name} ({first_line(err)})") from None
    cls = module
    for part in attribute.split("."):
        cls = getattr(cls, part, None)
    return _checked(name, cls, attribute)


def _checked(name: str, cls: Any, what: str) -> type[Reward]:
    if not (isinstance(cls, type) and issubclass(cls, Reward)):
        raise ConfigError(f"reward plugin '{name}': {what} is not a distar.rewards.base.Reward subclass")
    return cls


def load_plugin(name: str, options: dict[str, Any]) -> Reward:
    """An instance of the plugin class ``name`` built with ``options``."""
    cls = plugin_class(name)
    try:
        return cls(**options)
    except TypeError as err:
        raise ConfigError(f"reward plugin '{name}': options {sorted(options)} do not fit ({first_line(err)})") from None
    except Exception as err:
        raise ConfigError(f"reward plugin '{name}': building it failed ({first_line(err)})") from None


#: Side of the random probe image of :func:`probe_reward`.
PROBE_SIZE = 64


def probe_reward(reward: Reward, prompt: str, *, name: str, differentiable: bool) -> None:
    """Score one random image with ``prompt`` and check the contract in one-line errors: a finite (1,)
    tensor, and with ``differentiable`` a finite gradient reaching the image."""
    images = torch.rand(1, 3, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))
    images = images.to(reward.device).requires_grad_(differentiable)
    try:
        with torch.enable_grad() if differentiable else torch.no_grad():
            scores = reward.score(images, [prompt])
    except Exception as err:
        raise ConfigError(
            f"reward '{name}': score() failed on a {PROBE_SIZE}×{PROBE_SIZE} probe image ({first_line(err)})"
        ) from None
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (1,):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ConfigError(f"reward '{name}': score() must return a (B,) tensor, got {got} for B = 1")
    if not bool(torch.isfinite(scores.detach()).all()):
        raise ConfigError(f"reward '{name}': score() returned a non-finite value on a probe image")
    if not differentiable:
        return
    grad = torch.autograd.grad(scores.sum(), images, allow_unused=True)[0] if scores.requires_grad else None
    if grad is None:
        raise ConfigError(
            f"reward '{name}': its score has no gradient to the images, and objective.reward_scale > 0 trains "
            "on it (compute it with torch ops on the images, or set reward_scale 0 to log it only)"
        )
    if not bool(torch.isfinite(grad).all()):
        raise ConfigError(f"reward '{name}': the gradient of its score to a probe image is not finite")

