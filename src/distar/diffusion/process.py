"""The diffusion process in pure torch (docs/math.md §1, §5): the forward process x_t = α_t x0 + σ_t ε
(Eq. 2.1) and its schedules, the conversions between a network's predictions, and guidance (Eq. 3.5).

A :class:`Schedule` maps a time tensor to (α_t, σ_t). Discrete schedules (SD 1.5, SDXL: 1000 steps)
index a table ``alphas_cumprod`` by integer t; continuous ones take float t in (0, 1]. Nothing in
:mod:`distar.objectives` assumes α_t² + σ_t² = 1: :class:`FlowMatchSchedule` is rectified flow
(SD3, FLUX, SANA), α_t = 1 − t, σ_t = t (docs/math.md §1).

The conversions take ``alpha_t``/``sigma_t`` already broadcastable to ``x_t`` (:func:`expand_like`).
Prediction-type names follow diffusers: ``"epsilon"``, ``"sample"`` (x0), ``"v_prediction"`` and
``"flow_prediction"`` (the rectified-flow velocity u = ε − x0 that SD3, FLUX and SANA transformers
predict).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Literal, Mapping

import torch
from torch import Tensor

# ---------------------------------------------------------------- forward process (docs/math.md §1, Eq. 2.1)

def expand_like(coef: Tensor, x: Tensor) -> Tensor:
    """View a per-sample coefficient (B,) as (B, 1, ..., 1) so it broadcasts against ``x``."""
    return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))


class Schedule(ABC):
    """A variance-preserving-type noise schedule over times in ``[t_lo, t_hi]``."""

    #: smallest and largest valid time, in the schedule's own units.
    t_lo: float
    t_hi: float
    discrete: bool

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """α_t, same shape as ``t``."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """σ_t, same shape as ``t``."""

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Eq. (2.1): x_t = α_t x0 + σ_t ε, with t of shape (B,)."""
        alpha_t = expand_like(self.alpha(t), x0).to(x0.dtype)
        sigma_t = expand_like(self.sigma(t), x0).to(x0.dtype)
        return alpha_t * x0 + sigma_t * noise

    def sample_t(
        self,
        batch_size: int,
        t_min: float = 0.02,
        t_max: float = 0.98,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """t ~ U over the fraction [t_min, t_max] of the time range (DMD2: 2 %..98 %)."""
        if not 0.0 <= t_min <= t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}")
        u = torch.rand(batch_size, generator=generator, device="cpu").to(device)
        frac = t_min + (t_max - t_min) * u
        return self._drawn(self.t_lo + frac * (self.t_hi - self.t_lo))

    def _drawn(self, t: Tensor) -> Tensor:
        """A time drawn uniformly from the range, as :meth:`sample_t` returns it (discrete: an integer step)."""
        return t.round().long() if self.discrete else t


class DiscreteSchedule(Schedule):
    """A table of ᾱ_t over integer t = 0..T-1 (DDPM/SD style): α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t).

    ᾱ_t lies in (0, 1), except that the last entry may be 0 (zero terminal SNR, Lin et al. 2024),
    where only x0- and v-predictions are defined.
    """

    discrete = True

    def __init__(self, alphas_cumprod: Tensor) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if ac.dim() != 1 or len(ac) < 2 or not bool((ac[:-1] > 0).all() and ((ac >= 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D table with values in (0, 1) (the last may be 0)")
        self.alphas_cumprod = ac
        self._on_device: dict[torch.device, Tensor] = {}  # the table's copy on each device used
        self.t_lo = 0.0
        self.t_hi = float(len(ac) - 1)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def _table(self, t: Tensor) -> Tensor:
        index = t.long().clamp(0, self.num_train_timesteps - 1)
        table = self._on_device.get(t.device)
        if table is None:
            table = self._on_device[t.device] = self.alphas_cumprod.to(t.device)
        return table[index]

    def alpha(self, t: Tensor) -> Tensor:
        return self._table(t).sqrt().float()

    def sigma(self, t: Tensor) -> Tensor:
        return (1.0 - self._table(t)).sqrt().float()

    @classmethod
    def from_betas(
        cls,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear",
    ) -> "DiscreteSchedule":
        """The beta schedules of DDPM / Stable Diffusion (``scaled_linear`` 0.00085..0.012 for SD/SDXL)."""
        T = num_train_timesteps
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
        else:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r}")
        # diffusers computes the cumulative product in float32; do the same so tables match exactly.
        return cls(torch.cumprod(1.0 - betas.float(), dim=0).double())

    @property
    def zero_terminal_snr(self) -> bool:
        """Whether the last timestep is pure noise (ᾱ = 0)."""
        return bool(self.alphas_cumprod[-1] == 0)

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> "DiscreteSchedule":
        """The scheduler's own ``alphas_cumprod`` table (diffusers DDPM/DDIM/Euler/... schedulers), so any
        option that shapes it (``rescale_betas_zero_snr``, ``timestep_spacing`` aside) is honoured."""
        return cls(torch.as_tensor(scheduler.alphas_cumprod).double())

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any] | Any) -> "DiscreteSchedule":
        """Rebuild the table from a scheduler ``config`` alone (beta schedules and ``trained_betas``).

        A config with ``rescale_betas_zero_snr`` is refused: use :meth:`from_scheduler`.
        """
        cfg = getattr(config, "config", config)
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
        if get("rescale_betas_zero_snr", False):
            raise ValueError("rescale_betas_zero_snr: build the schedule from the scheduler's own table (from_scheduler)")
        trained = get("trained_betas", None)
        if trained is not None:
            betas = torch.as_tensor(trained, dtype=torch.float32)
            return cls(torch.cumprod(1.0 - betas, dim=0).double())
        return cls.from_betas(
            beta_start=get("beta_start", 0.0001),
            beta_end=get("beta_end", 0.02),
            num_train_timesteps=get("num_train_timesteps", 1000),
            beta_schedule=get("beta_schedule", "linear"),
        )


class ContinuousVPSchedule(Schedule):
    """Continuous VP schedule on t ∈ [t_eps, 1].

    ``linear``: log ᾱ(t) = −¼ t² (β_max − β_min) − ½ t β_min (Song et al. 2021 VP-SDE);
    ``cosine``: ᾱ(t) = cos²(π/2 · (t + s)/(1 + s)) / cos²(π/2 · s/(1 + s)).
    """

    discrete = False

    def __init__(
        self,
        kind: Literal["linear", "cosine"] = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        cosine_s: float = 0.008,
        t_eps: float = 1e-3,
    ) -> None:
        if kind not in ("linear", "cosine"):
            raise ValueError(f"unknown continuous schedule kind {kind!r}")
        self.kind, self.beta_min, self.beta_max, self.cosine_s = kind, beta_min, beta_max, cosine_s
        self.t_lo, self.t_hi = t_eps, 1.0

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """log ᾱ(t)."""
        t = t.to(torch.float64) if t.dtype == torch.float64 else t.float()
        if self.kind == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = self.cosine_s
        f = torch.cos(math.pi / 2 * (t + s) / (1 + s)).clamp_min(1e-6)
        return 2 * (torch.log(f) - math.log(math.cos(math.pi / 2 * s / (1 + s))))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Tensor) -> Tensor:
        return (-torch.expm1(self.log_alpha_bar(t))).clamp_min(0).sqrt()


class FlowMatchSchedule(Schedule):
    """Rectified flow on t ∈ [t_eps, 1]: x_t = (1 − t) x0 + t ε, so α_t = 1 − t, σ_t = t (§1).

    t is diffusers' ``sigma``; networks are fed the timestep 1000·t (FLUX's transformer divides by
    1000 again). ``shift`` is the timestep shift s of ``FlowMatchEulerDiscreteScheduler``,
    t ↦ s t / (1 + (s − 1) t), applied in :meth:`sample_t` so training draws the noise levels the
    model was trained and is sampled at; resolution-dependent ("dynamic") shifting enters as the
    equivalent static s (see :meth:`from_scheduler_config`).
    """

    discrete = False

    def __init__(self, shift: float = 1.0, t_eps: float = 1e-3) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.shift, self.t_lo, self.t_hi = float(shift), t_eps, 1.0

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - self._float(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self._float(t)

    @staticmethod
    def _float(t: Tensor) -> Tensor:
        return t if t.dtype == torch.float64 else t.float()

    def shifted(self, t: Tensor) -> Tensor:
        """The timestep shift t ↦ s t / (1 + (s − 1) t) (identity for s = 1)."""
        t = self._float(t)
        return self.shift * t / (1 + (self.shift - 1) * t)

    def _drawn(self, t: Tensor) -> Tensor:
        """Shifted uniform times: u ~ U over the fraction [t_min, t_max] of [t_eps, 1], t = shift(u)."""
        return self.shifted(t)

    @classmethod
    def from_scheduler_config(
        cls, config: Mapping[str, Any] | Any, image_seq_len: int | None = None
    ) -> "FlowMatchSchedule":
        """From a diffusers flow scheduler (or its ``config``): ``FlowMatchEulerDiscreteScheduler``
        (SD3, FLUX) or a flow-sigma ``DPMSolverMultistepScheduler`` (SANA: ``flow_shift``).

        With ``use_dynamic_shifting`` (FLUX) the shift depends on the number of latent tokens
        ``image_seq_len``: μ is interpolated linearly from ``base_shift`` at ``base_image_seq_len``
        to ``max_shift`` at ``max_image_seq_len``, and the exponential time shift
        e^μ / (e^μ + (1/t − 1)) equals the static shift with s = e^μ (the linear one: s = μ).
        """
        cfg = getattr(config, "config", config)
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
        for key in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"):
            if get(key, None):
                raise ValueError(f"flow scheduler option {key!r} is not supported")
        if get("use_dynamic_shifting", False):
            if image_seq_len is None:
                raise ValueError("a dynamically shifted flow schedule needs image_seq_len")
            base_len, max_len = get("base_image_seq_len", 256), get("max_image_seq_len", 4096)
            base_shift, max_shift = get("base_shift", 0.5), get("max_shift", 1.15)
            slope = (max_shift - base_shift) / (max_len - base_len)
            mu = base_shift + slope * (image_seq_len - base_len)
            shift = math.exp(mu) if get("time_shift_type", "exponential") == "exponential" else mu
        else:
            shift = get("flow_shift", None) or get("shift", 1.0)
        return cls(shift=shift, t_eps=1.0 / get("num_train_timesteps", 1000))


# ---------------------------------------------------------------- predictions (docs/math.md §1)

PredictionType = Literal["epsilon", "sample", "v_prediction", "flow_prediction"]


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x̂0 = (x_t − σ_t ε̂) / α_t."""
    return (x_t - sigma_t * eps) / alpha_t


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """ε̂ = (x_t − α_t x̂0) / σ_t."""
    return (x_t - alpha_t * x0) / sigma_t


def x0_from_v(x_t: Tensor, v: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x̂0 = (α_t x_t − σ_t v̂) / (α_t² + σ_t²), with v = α_t ε − σ_t x0 (= α_t x_t − σ_t v̂ for VP)."""
    return (alpha_t * x_t - sigma_t * v) / (alpha_t**2 + sigma_t**2)


def v_from_x0(x_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """v = α_t ε − σ_t x0 with ε = (x_t − α_t x0)/σ_t."""
    return alpha_t * eps_from_x0(x_t, x0, alpha_t, sigma_t) - sigma_t * x0


def x0_from_flow(x_t: Tensor, u: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x̂0 = (x_t − σ_t û) / (α_t + σ_t), with u = ε − x0 (= x_t − t û for rectified flow, §1)."""
    return (x_t - sigma_t * u) / (alpha_t + sigma_t)


def flow_from_x0(x_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """u = ε − x0 with ε = (x_t − α_t x0)/σ_t: the velocity d x_t/dt of x_t = (1 − t) x0 + t ε."""
    return eps_from_x0(x_t, x0, alpha_t, sigma_t) - x0


def score_from_x0(x_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """s(x_t) = −(x_t − α_t x̂0) / σ_t² (Tweedie)."""
    return -(x_t - alpha_t * x0) / sigma_t**2


def x0_from_score(x_t: Tensor, score: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x̂0 = (x_t + σ_t² s) / α_t."""
    return (x_t + sigma_t**2 * score) / alpha_t


def _passthrough(x_t: Tensor, value: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    return value


_TO_X0 = {"sample": _passthrough, "epsilon": x0_from_eps, "v_prediction": x0_from_v, "flow_prediction": x0_from_flow}
_FROM_X0 = {"sample": _passthrough, "epsilon": eps_from_x0, "v_prediction": v_from_x0, "flow_prediction": flow_from_x0}


def _conversion(table: dict[str, Callable[..., Tensor]], prediction_type: str) -> Callable[..., Tensor]:
    if prediction_type not in table:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return table[prediction_type]


def to_x0(
    prediction: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, prediction_type: PredictionType
) -> Tensor:
    """A network's raw output, of the given type, as an x0-prediction."""
    return _conversion(_TO_X0, prediction_type)(x_t, prediction, alpha_t, sigma_t)


def from_x0(
    x0: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, prediction_type: PredictionType
) -> Tensor:
    """An x0-prediction expressed in the given prediction type (inverse of :func:`to_x0`)."""
    return _conversion(_FROM_X0, prediction_type)(x_t, x0, alpha_t, sigma_t)


# ---------------------------------------------------------------- guidance (docs/math.md §5)

def cfg_combine(cond: Tensor, uncond: Tensor, guidance_scale: float) -> Tensor:
    """Eq. (3.5): s^ω = s(·|∅) + ω (s(·|c) − s(·|∅)).

    The weights sum to one, so the same combination of x0- or ε-predictions gives the x0-/ε-form
    of the guided score at the same x_t.
    """
    return uncond + guidance_scale * (cond - uncond)
