"""Diffusion math in pure torch: :mod:`~distar.diffusion.process` (the forward process 2.1 and its schedules,
incl. rectified flow; the conversions between predictions, §1; guidance, 3.5) and a DDIM sampler
(:mod:`~distar.diffusion.sampler`)."""

from distar.diffusion.process import (
    ContinuousVPSchedule,
    DiscreteSchedule,
    FlowMatchSchedule,
    PredictionType,
    Schedule,
    cfg_combine,
    eps_from_x0,
    expand_like,
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
