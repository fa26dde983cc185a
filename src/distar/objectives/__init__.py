"""Diff-Instruct* objectives in pure torch, one function per equation of docs/math.md §1-§6.

- :mod:`~distar.objectives.di_star` — both losses of Algorithm 1: :func:`dsm_loss`, the assistant's
  denoising score matching (2.2); the divergences :class:`L2`, :class:`PseudoHuber` (3.8) and
  :class:`IKL` with d, d′, their weights w(t) and the units of c; the generator loss (3.4) with its
  terms: :func:`generator_loss` (Theorem 3.1 score divergences, or IKL of §6), :func:`cfg_reward_loss`
  (Theorem 3.2, 3.6-3.7), :func:`reward_loss` (−α r, 3.1), and :class:`DIStarLoss`, the whole
  per-batch objective of a config
- :mod:`~distar.objectives.presets` — :class:`ObjectiveConfig` and the paper's methods,
  :func:`preset` / :func:`preset_at` / :data:`PRESETS` (Table 2)
"""

from distar.objectives.di_star import (
    IKL,
    L2,
    DIStarLoss,
    Divergence,
    PseudoHuber,
    ScoreDivergence,
    cfg_reward_loss,
    dmd2_normalizer,
    dsm_loss,
    generator_loss,
    ikl_loss,
    make_divergence,
    native_dsm_weight,
    reward_loss,
    score_divergence_loss,
)
from distar.objectives.presets import PRESETS, ObjectiveConfig, preset, preset_at

__all__ = [
    "DIStarLoss",
    "Divergence",
    "IKL",
    "L2",
    "ObjectiveConfig",
    "PRESETS",
    "PseudoHuber",
    "ScoreDivergence",
    "cfg_reward_loss",
    "dmd2_normalizer",
    "dsm_loss",
    "generator_loss",
    "ikl_loss",
    "make_divergence",
    "native_dsm_weight",
    "preset",
    "preset_at",
    "reward_loss",
    "score_divergence_loss",
]
