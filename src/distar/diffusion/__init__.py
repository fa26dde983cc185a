"""Diffusion math in pure torch: schedules (2.1), parametrisations (§1), guidance (3.5)."""

from distar.diffusion.guidance import cfg_combine
from distar.diffusion.param import (
    PredictionType,
    eps_from_x0,
    from_x0,
    score_from_x0,
    to_x0,
    v_from_x0,
    x0_from_eps,
    x0_from_score,
    x0_from_v,
)
from distar.diffusion.schedule import ContinuousVPSchedule, DiscreteSchedule, Schedule, expand_like

__all__ = [
    "PredictionType",
    "Schedule",
    "DiscreteSchedule",
    "ContinuousVPSchedule",
    "expand_like",
    "cfg_combine",
    "eps_from_x0",
    "from_x0",
    "score_from_x0",
    "to_x0",
    "v_from_x0",
    "x0_from_eps",
    "x0_from_score",
    "x0_from_v",
]
