"""Reward plugins: a :class:`~distar.rewards.base.Reward` subclass named ``package.module:Class`` in a config.

``rewards: [{name: "my_pkg.rewards:MyReward", weight: 1, options: {scale: 2}}]`` builds
``MyReward(scale=2)``. The class follows the :class:`~distar.rewards.base.Reward` contract: ``score``
takes images (B, 3, H, W) in [0, 1] and B prompts and returns (B,) scores, differentiable in the images
when it is trained on.
"""

from __future__ import annotations

import importlib
from typing import Any

from distar.config import ConfigError
from distar.errors import first_line
from distar.rewards.base import Reward


def plugin_class(name: str) -> type[Reward]:
    """The class that ``module:Class`` names, checked to be a :class:`Reward` subclass (one-line errors)."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"reward plugin '{name}': write it as package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the plugin's own import error, whatever it is, in one line
        raise ConfigError(f"reward plugin '{name}': cannot import {module_name} ({first_line(err)})") from None
    cls: Any = module
    for part in attribute.split("."):
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, Reward)):
        raise ConfigError(f"reward plugin '{name}': {attribute} is not a distar.rewards.base.Reward subclass")
    return cls


def load_plugin(name: str, options: dict[str, Any]) -> Reward:
    """An instance of the plugin class ``name`` built with ``options``."""
    cls = plugin_class(name)
    try:
        return cls(**options)
    except TypeError as err:
        raise ConfigError(f"reward plugin '{name}': options {sorted(options)} do not fit ({first_line(err)})") from None
