"""The reward names and the :class:`RewardSpec` config section (one reward term of Eq. 3.1).

Kept apart from :mod:`distar.rewards.registry` so that the model modules and the training config can
use it without importing the loaders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from distar.config import ConfigError, field

#: Every reward name understood by :func:`~distar.rewards.registry.load_reward`.
REWARD_NAMES: tuple[str, ...] = ("pickscore", "clip", "hpsv2", "hpsv2.1", "imagereward", "aesthetic")

#: ``path`` value that builds a tiny randomly initialised model locally (tests, offline trials).
TINY = "tiny"


def is_plugin_name(name: str) -> bool:
    """Whether ``name`` names a reward plugin: ``module:Class``, or an installed entry point of group
    ``distar.rewards`` that is no built-in name."""
    if ":" in name:
        return True
    if name in REWARD_NAMES:
        return False
    from distar.rewards.plugins import registered_plugins

    return name in registered_plugins()


@dataclass
class RewardSpec:
    """One reward term: which model, where its weights are, and its weight in the sum."""

    name: str = field(
        help=f"reward model: one of {', '.join(REWARD_NAMES)}, or a plugin: 'package.module:Class' or the name "
        "of an installed entry point of group distar.rewards (a distar.rewards.base.Reward subclass built with "
        "`options`; docs/rewards-own.md)"
    )
    weight: float = field(1.0, help="weight w_k of this term in r = Σ_k w_k r_k")
    path: str | None = field(
        None,
        help="weights: hub id, local folder or checkpoint file (default: the published model; "
        "'tiny' builds a tiny random model locally)",
    )
    processor: str | None = field(
        None,
        help="hub id or folder of the tokenizer/preprocessor config when `path` has none "
        "(default: the one the published model uses)",
    )
    backbone: str | None = field(
        None,
        help="aesthetic only: CLIP image encoder (hub id or folder; default openai/clip-vit-large-patch14)",
    )
    form: Literal["cosine", "logit"] = field(
        "cosine",
        help="pickscore only: 'cosine' = cos(e_img, e_txt), 'logit' = exp(logit_scale)·cos",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = field(
        None, help="weights dtype of this reward (default: model.dtype when training, metric_dtype in eval, else float32)"
    )
    local_files_only: bool = field(False, help="never download weights; use local files and the hub cache only")
    random_weights: bool = field(
        False, help="pickscore, clip: the architecture of `path`'s config with random weights (memory estimates)"
    )
    options: dict[str, Any] = field({}, help="plugin rewards only: keyword arguments of the plugin class")

    @property
    def is_plugin(self) -> bool:
        """Whether ``name`` names a plugin class (``module:Class`` or a registered entry point of group
        ``distar.rewards``) rather than a built-in reward."""
        return is_plugin_name(self.name)

    def __post_init__(self) -> None:
        if self.is_plugin:
            from distar.rewards.plugins import plugin_class

            plugin_class(self.name)  # imports now: a broken plugin is refused before any model loads
            return
        if self.options:
            raise ConfigError(f"reward '{self.name}': options are only for plugin rewards (module:Class or entry point)")
        if self.name not in REWARD_NAMES:
            raise ConfigError(
                f"unknown reward '{self.name}' (choose from {', '.join(REWARD_NAMES)}, "
                "a plugin as module:Class, or an installed entry point)"
            )
        if self.form != "cosine" and self.name != "pickscore":
            raise ConfigError(f"reward '{self.name}': form '{self.form}' is only defined for pickscore")
        if self.backbone is not None and self.name != "aesthetic":
            raise ConfigError(f"reward '{self.name}': backbone is only used by aesthetic")
        if self.random_weights and self.name not in ("pickscore", "clip"):
            raise ConfigError(f"reward '{self.name}': random_weights is only supported by pickscore and clip")
