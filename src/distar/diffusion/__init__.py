"""Diffusion math in pure torch: schedules (2.1, incl. rectified flow), parametrisations (§1), guidance (3.5)."""

from distar.diffusion.guidance import cfg_combine
from distar.diffusion.param import (
    PredictionType,
    eps_from_x0,
    flow_from_x0,
    from_x0,
    score_from_x0,
    to_x0,
    v_from_x0,
    x0_from_eps,
    x0_from_flow,
    x0_from_score,
    x0_from_v,
)
from distar.diffusion.schedule import ContinuousVPSchedule, DiscreteSchedule, FlowMatchSchedule, Schedule, expand_like

__all__ = [
    "PredictionType",
    "Schedule",
    "DiscreteSchedule",
    "ContinuousVPSchedule",
    "FlowMatchSchedule",
    "expand_like",
    "cfg_combine",
    "eps_from_x0",
    "flow_from_x0",
    "from_x0",
    "score_from_x0",
    "to_x0",
    "v_from_x0",
    "x0_from_eps",
    "x0_from_flow",
    "x0_from_score",
    "x0_from_v",
]
