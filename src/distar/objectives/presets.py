"""The objective configuration and the paper's methods as presets (docs/math.md §6, Table 2).

Every method is one configuration of the same loss, reward − divergence:

| preset          | divergence    | reward α | CFG            |
|-----------------|---------------|----------|----------------|
| ``diff_instruct`` | IKL         | 0        | inner ω        |
| ``di_pp``         | IKL         | 100      | inner ω        |
| ``dmd2``          | IKL, DMD2-normalised | 0 | inner ω     |
| ``sim``           | pseudo-Huber | 0       | inner ω        |
| ``di_star``       | pseudo-Huber | 100     | inner ω = 7.5  |
| ``di_star_out``   | pseudo-Huber | 100     | outer α_cfg    |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from distar.config import ConfigError, field, from_dict

#: Units of ``huber_c`` (:class:`~distar.objectives.di_star.PseudoHuber`) and the time weightings w(t).
HuberUnits = Literal["x0_per_sqrt_dim", "score"]
Weighting = Literal["uniform", "x0"]

PRESETS: dict[str, dict[str, Any]] = {
    "diff_instruct": {"divergence": "ikl", "reward_scale": 0.0, "cfg_mode": "inner"},
    "di_pp": {"divergence": "ikl", "reward_scale": 100.0, "cfg_mode": "inner"},
    "dmd2": {"divergence": "ikl", "normalize": True, "reward_scale": 0.0, "cfg_mode": "inner"},
    "sim": {"divergence": "pseudo_huber", "reward_scale": 0.0, "cfg_mode": "inner"},
    "di_star": {"divergence": "pseudo_huber", "reward_scale": 100.0, "cfg_mode": "inner"},
    "di_star_out": {
        "divergence": "pseudo_huber",
        "reward_scale": 100.0,
        "cfg_mode": "outer",
        "guidance_scale": 1.0,
        "cfg_reward_scale": 6.5,
    },
}


@dataclass
class ObjectiveConfig:
    """What the generator minimises: −α r + divergence [+ α_cfg L_cfg] (Eq. 3.4, 3.6).

    With ``preset`` set, the preset's values are the defaults and keys given beside it override them.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: str | None = field(None, help="method preset: " + ", ".join(PRESETS))
    divergence: Literal["pseudo_huber", "l2", "ikl"] = field(
        "pseudo_huber", help="score divergence d (3.2): pseudo_huber (3.8), l2, or ikl (§6 baselines)"
    )
    huber_c: float = field(
        0.1, help="pseudo-Huber constant c (3.8) in huber_c_units, converted by PseudoHuber.at (di_star.py)"
    )
    huber_c_units: HuberUnits = field(
        "x0_per_sqrt_dim", help="units of huber_c: x0_per_sqrt_dim (scale-free) or score"
    )
    reward_scale: float = field(0.0, help="reward scale α of Eq. (3.1), in the units of docs/math.md §9")
    cfg_mode: Literal["inner", "outer"] = field(
        "inner", help="inner: guided reference in y_t (3.5); outer: implicit CFG reward (3.6-3.7)"
    )
    guidance_scale: float = field(7.5, help="CFG scale ω of the reference (3.5); 1 = no guidance")
    cfg_reward_scale: float = field(0.0, help="α_cfg of the implicit CFG reward (outer mode)")
    weighting: Weighting = field("x0", help="time weighting w(t): x0 (unit x0-space terms) or uniform")
    normalize: bool = field(False, help="DMD2 per-sample normalisation (IKL only)")
    dsm_weighting: Literal["native", "x0"] = field(
        "native", help="assistant DSM (2.2): native = the backbone's own prediction MSE, x0 = x0-MSE"
    )
    t_min: float = field(0.02, help="lowest diffusion time, as a fraction of the schedule")
    t_max: float = field(0.98, help="highest diffusion time, as a fraction of the schedule")

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {self.preset!r} (choose from {', '.join(PRESETS)})")
        if self.huber_c <= 0:
            raise ConfigError("huber_c: must be > 0")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ConfigError("t_min/t_max: need 0 <= t_min < t_max <= 1")
        if self.normalize and self.divergence != "ikl":
            raise ConfigError("normalize: DMD2 normalisation applies to divergence 'ikl' only")
        if self.cfg_mode == "inner" and self.cfg_reward_scale != 0.0:
            raise ConfigError("cfg_reward_scale: only used with cfg_mode 'outer'")


def preset(name: str, **overrides: Any) -> ObjectiveConfig:
    """The named method with optional overrides, e.g. ``preset("di_star", reward_scale=10.0)``."""
    return from_dict(ObjectiveConfig, {"preset": name, **overrides})


def preset_at(
    name: str,
    *,
    reward_scale: float | None = None,
    guidance_scale: float | None = None,
    cfg_reward_scale: float | None = None,
    huber_c: float | None = None,
) -> ObjectiveConfig:
    """The named method at a setting: ``reward_scale`` α only if the preset has a reward, ``guidance_scale``
    ω only if it uses inner CFG, ``cfg_reward_scale`` α_cfg only if it uses outer CFG, and ``huber_c``;
    a value of None keeps the preset's own."""
    base = PRESETS.get(name, {})  # an unknown name fails in preset()
    inner = base.get("cfg_mode", "inner") == "inner"
    overrides = {
        "reward_scale": reward_scale if base.get("reward_scale", 0.0) else None,
        "guidance_scale": guidance_scale if inner else None,
        "cfg_reward_scale": None if inner else cfg_reward_scale,
        "huber_c": huber_c,
    }
    return preset(name, **{k: v for k, v in overrides.items() if v is not None})
