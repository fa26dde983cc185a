"""The full generator objective of Diff-Instruct* for a batch (di-star-math.md Eq. 3.4, 3.6).

:class:`DIStarLoss` reads like the paper: divergence term (3.4) with the reference CFG-enhanced
inside y_t (inner, 3.5) or plain (outer), minus α times the reward, plus α_cfg times the implicit
CFG-reward loss (3.6-3.7) in outer mode. It only sees tensors and callables, never a network.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from distar.diffusion.guidance import cfg_combine
from distar.diffusion.schedule import expand_like
from distar.objectives.di_star import cfg_reward_loss, generator_loss, reward_loss
from distar.objectives.presets import ObjectiveConfig
from distar.objectives.weighting import divergence_weight, huber_c_in_score_units

X0Fn = Callable[[Tensor], Tensor]
X0PairFn = Callable[[Tensor], tuple[Tensor, Tensor]]


class DIStarLoss:
    """Per-sample terms of the generator loss, from an :class:`ObjectiveConfig`.

    Call with ``x0`` (generator output, with graph), ``noise`` ε, per-sample ``alpha_t``/``sigma_t``
    of shape (B,), ``fake_x0`` (assistant), ``ref_x0`` (conditional reference) and ``ref_x0_pair``
    (conditional and unconditional reference in one call), and the per-sample ``reward`` r(x0, c)
    (or None). Returns ``{"loss", "divergence", "reward", "cfg"}`` tensors of shape (B,); "loss" is
    what the generator minimises.
    """

    def __init__(self, config: ObjectiveConfig) -> None:
        self.config = config

    @property
    def uses_reward(self) -> bool:
        return self.config.reward_scale != 0.0

    def __call__(
        self,
        x0: Tensor,
        noise: Tensor,
        alpha_t: Tensor,
        sigma_t: Tensor,
        fake_x0: X0Fn,
        ref_x0: X0Fn,
        ref_x0_pair: X0PairFn,
        reward: Tensor | None = None,
    ) -> dict[str, Tensor]:
        cfg = self.config
        a, s = expand_like(alpha_t, x0).to(x0.dtype), expand_like(sigma_t, x0).to(x0.dtype)
        weight = divergence_weight(cfg.weighting, cfg.divergence, alpha_t, sigma_t).to(x0.dtype)
        huber_c = huber_c_in_score_units(cfg.huber_c, cfg.huber_c_units, alpha_t, sigma_t, x0[0].numel())

        pair_at_x_t: list[tuple[Tensor, Tensor]] = []

        def real_x0(x_t: Tensor) -> Tensor:
            if cfg.cfg_mode == "inner":
                return ref_x0(x_t) if cfg.guidance_scale == 1.0 else cfg_combine(*ref_x0_pair(x_t), cfg.guidance_scale)
            pair_at_x_t.append(ref_x0_pair(x_t))  # outer: one forward serves (3.4) and (3.6)
            return pair_at_x_t[-1][0]

        divergence = generator_loss(
            x0, noise, a, s, fake_x0, real_x0, cfg.divergence, huber_c, weight, cfg.normalize
        )
        terms = {"divergence": divergence, "loss": divergence}
        if cfg.cfg_mode == "outer" and cfg.cfg_reward_scale != 0.0:
            cond, uncond = pair_at_x_t[-1]
            x_t = a * x0 + s * noise
            cfg_w = divergence_weight(cfg.weighting, "cfg", alpha_t, sigma_t).to(x0.dtype)
            terms["cfg"] = cfg_reward_loss(x_t, a, s, cond, uncond, cfg_w)
            terms["loss"] = terms["loss"] + cfg.cfg_reward_scale * terms["cfg"]
        if reward is not None:
            terms["reward"] = reward.detach()
            if self.uses_reward:
                terms["loss"] = terms["loss"] + reward_loss(reward, cfg.reward_scale)
        return terms
