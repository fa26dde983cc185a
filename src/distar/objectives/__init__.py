"""Diff-Instruct* objectives in pure torch, one function per equation of di-star-math.md.

- :func:`dsm_loss` — assistant denoising score matching (2.2)
- :func:`generator_loss` — Theorem 3.1, loss (3.4) without reward (score divergences), or IKL (§6)
- :func:`cfg_reward_loss` — Theorem 3.2, implicit CFG reward (3.6-3.7)
- :func:`reward_loss` — −α r (3.1)
- :class:`DIStarLoss` — the full per-batch objective from an :class:`ObjectiveConfig`
- :func:`preset` / :data:`PRESETS` — the paper's methods (Table 2)
"""

from distar.objectives.di_star import cfg_reward_loss, generator_loss, make_divergence, reward_loss, score_divergence_loss
from distar.objectives.divergences import L2, PseudoHuber, ScoreDivergence
from distar.objectives.dsm import dsm_loss, native_dsm_weight
from distar.objectives.ikl import dmd2_normalizer, ikl_loss
from distar.objectives.objective import DIStarLoss
from distar.objectives.presets import PRESETS, ObjectiveConfig, preset
from distar.objectives.weighting import divergence_weight, huber_c_in_score_units

__all__ = [
    "DIStarLoss",
    "L2",
    "ObjectiveConfig",
    "PRESETS",
    "PseudoHuber",
    "ScoreDivergence",
    "cfg_reward_loss",
    "divergence_weight",
    "dmd2_normalizer",
    "dsm_loss",
    "generator_loss",
    "huber_c_in_score_units",
    "ikl_loss",
    "make_divergence",
    "native_dsm_weight",
    "preset",
    "reward_loss",
    "score_divergence_loss",
]
