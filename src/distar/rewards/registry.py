"""The reward loaders: by name or :class:`~distar.rewards.spec.RewardSpec`, alone or as a weighted sum.

``load_reward("pickscore")`` returns one frozen :class:`~distar.rewards.base.Reward`;
``build_reward([RewardSpec("pickscore", weight=100), RewardSpec("hpsv2.1", weight=10)])`` returns
the weighted sum r = Σ_k w_k r_k used as the explicit reward of Eq. (3.1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from distar.config import ConfigError
from distar.io import resolve_dtype, tiny_asset
from distar.rewards.base import Reward, WeightedReward
from distar.rewards.spec import TINY, RewardSpec


def _loaders() -> dict[str, Callable[[RewardSpec], Reward]]:
    # Imported here: the model modules pull in transformers.
    from distar.rewards.aesthetic import AestheticReward
    from distar.rewards.clip import CLIPScore, HPSv2, PickScore
    from distar.rewards.imagereward import ImageReward

    return {
        "pickscore": PickScore.from_spec,
        "clip": CLIPScore.from_spec,
        "hpsv2": HPSv2.from_spec,
        "hpsv2.1": HPSv2.from_spec,
        "imagereward": ImageReward.from_spec,
        "aesthetic": AestheticReward.from_spec,
    }


def load_reward(
    name_or_spec: str | RewardSpec,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    **overrides: object,
) -> Reward:
    """Load one frozen reward model in eval mode.

    ``name_or_spec`` is a name from :data:`REWARD_NAMES` or a :class:`RewardSpec`; keyword
    ``overrides`` replace spec fields (``path=``, ``processor=``, ``form=``, ...). Weights are cast to
    the spec's dtype, else ``dtype``, else float32. A missing checkpoint raises
    :class:`FileNotFoundError` with a one-line message naming the file and where to get it.
    """
    spec = RewardSpec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if overrides:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(RewardSpec)})
        if unknown:
            raise TypeError(f"load_reward got unknown option(s): {', '.join(unknown)}")
        spec = dataclasses.replace(spec, **overrides)
    if spec.is_plugin:
        from distar.rewards.plugins import load_plugin

        reward = load_plugin(spec.name, spec.options)
    else:
        if spec.path == TINY:
            spec = dataclasses.replace(spec, path=str(tiny_asset("reward", name=spec.name)))
        reward = _loaders()[spec.name](spec)
    reward.to(device=device, dtype=resolve_dtype(spec.dtype) or resolve_dtype(dtype) or torch.float32)
    return reward.freeze()


def build_reward(
    specs: Sequence[RewardSpec],
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> Reward:
    """The reward of a config: a single term with weight 1 as is, otherwise a :class:`WeightedReward`."""
    if not specs:
        raise ConfigError("rewards: at least one reward is needed")
    terms = [(spec.weight, load_reward(spec, device=device, dtype=dtype)) for spec in specs]
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return WeightedReward(terms)
