"""One-step generators on the shipped reference: the build's distilled start, trainer runs, sampling.

The build distils the one-step generator the demo starts from — the analogue of the DMD2 model that
DI*-SDXL starts from — in two stages, as DMD does:

1. **regression warm start** (:func:`distill_one_step`; knowledge distillation, Luhman & Luhman 2021):
   the reference's UNet, evaluated at t_init on z, is trained so that its x0-prediction matches the
   reference's multi-step CFG sample (the build's sampler: DPM-Solver++) started from the same z;
2. **distribution matching** (:func:`refine_one_step`): the reward-free DMD2 (or SIM) preset trained
   from that start by :class:`distar.train.Trainer` on the "sd" backend, with the reference's guided
   score as target — distar distilling with its own trainer.

The demo then trains DI* and its baselines from the result through the same trainer (pixel space:
decode = (x + 1)/2).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import Tensor

from distar.backends.config import ModelConfig
from distar.config import field, from_dict
from distar.diffusion import DiscreteSchedule, to_x0
from distar.fit import Log, TrainLoop, fit
from distar.inference.pixel import SCHEDULER_CONFIG, ReferenceSampler, encode_prompts, seeded_noise
from distar.objectives.presets import PRESETS, ObjectiveConfig, preset
from distar.protocols import Backend, BackendModel
from distar.rewards import RewardSpec
from distar.rewards.hub import quiet_transformers
from distar.worlds.shapes.grammar import IMAGE_SIZE, sample_prompts
from distar.train import TrainConfig


@dataclasses.dataclass
class OneStepLoop:
    """Settings of one DI*-family training run in this world."""

    steps: int = field(300, help="generator updates (one assistant DSM update each)")
    batch_size: int = field(8, help="prompts per update")
    generator_lr: float = field(1e-4, help="generator AdamW learning rate")
    assistant_lr: float = field(1e-4, help="assistant AdamW learning rate")
    train_prompts: int = field(4000, help="training prompts drawn from the grammar")
    seed: int = field(4, help="seed of prompts, noise and time draws")
    max_grad_norm: float = field(
        1e6, help="gradient-norm clip of generator and assistant (the default never binds here; norms are logged)"
    )


@dataclasses.dataclass
class RefineLoop(OneStepLoop):
    """Reward-free distribution matching of the regression start through the trainer (build stage 2)."""

    method: str = field("dmd2", help="objective preset without reward: dmd2 or sim")
    guidance_scale: float = field(3.0, help="inner CFG ω of the reference score that is matched (Eq. 3.5)")


@dataclasses.dataclass
class DistillLoop(TrainLoop):
    """Regression of the one-step generator on reference samples."""

    samples: int = field(768, help="reference samples (z, prompt → multi-step CFG sample) to regress on")
    t_init: int = field(999, help="conditioning timestep at which the generator UNet reads z (§2)")


def distill_one_step(
    sampler: ReferenceSampler, loop: DistillLoop, log: Log
) -> tuple[UNet2DConditionModel, dict[str, float]]:
    """A one-step generator UNet regressed on the reference sampler's outputs (module docstring).

    Returns the UNet and the teacher-sample figures; the generator's x0 is the UNet output at
    ``t_init`` converted with the reference's prediction type (as :mod:`distar.backends` does).
    """
    prompts = sample_prompts(loop.samples, loop.seed)
    seeds = [loop.seed * 10**6 + i for i in range(loop.samples)]
    teacher = torch.cat(
        [sampler.generate_images(prompts[i : i + 64], seeds[i : i + 64]) for i in range(0, len(prompts), 64)]
    ) * 2 - 1
    z = seeded_noise(seeds, (3, IMAGE_SIZE, IMAGE_SIZE))
    cond = torch.cat(
        [encode_prompts(sampler.text_encoder, sampler.tokenizer, prompts[i : i + 64]) for i in range(0, len(prompts), 64)]
    )
    schedule = DiscreteSchedule.from_scheduler_config(SCHEDULER_CONFIG)
    t = torch.tensor([loop.t_init])
    alpha_t, sigma_t = schedule.alpha(t), schedule.sigma(t)
    generator = copy.deepcopy(sampler.unet).train().requires_grad_(True)
    order = torch.Generator().manual_seed(loop.seed)

    def step_loss() -> dict[str, Tensor]:
        rows = torch.randint(0, len(prompts), (loop.batch_size,), generator=order)
        out = generator(z[rows], t.expand(len(rows)), cond[rows]).sample
        x0 = to_x0(out, z[rows], alpha_t, sigma_t, SCHEDULER_CONFIG["prediction_type"])
        return {"loss": F.mse_loss(x0, teacher[rows])}

    fit(generator, loop, step_loss, log)
    return generator.eval(), {"teacher_samples": len(prompts)}


def train_config(
    reference: Path,
    objective: ObjectiveConfig,
    loop: OneStepLoop,
    prompts: Sequence[str],
    output_dir: Path,
    t_init: int,
    reward: Path | RewardSpec | None = None,
    generator_init: Path | None = None,
    progress_bar: bool = True,
) -> TrainConfig:
    """A :class:`TrainConfig` for one run on the world's reference (CPU, no checkpoints but the last, no monitor);
    ``reward`` is a learned reward's folder (loaded as PickScore) or any reward term."""
    optimiser = {"max_grad_norm": loop.max_grad_norm}
    config = from_dict(TrainConfig, {
        "model": {"family": "sd", "pretrained": str(reference), "t_init": t_init, "generator_init": generator_init and str(generator_init)},
        "data": {"prompts": list(prompts), "batch_size": loop.batch_size},
        "optim": {"generator": {"lr": loop.generator_lr, **optimiser}, "assistant": {"lr": loop.assistant_lr, **optimiser}},
        "loop": {"max_steps": loop.steps, "cpu": True}, "checkpointing": {"save_final": False},
        "logging": {"every": 10, "report_to": "none", "progress_bar": progress_bar},
        "monitor": {"every": 0},  # the build trains on every prompt; the demo sets its own monitor
        "output_dir": str(output_dir), "seed": loop.seed,
    })  # fmt: skip
    rewards = [] if reward is None else [reward if isinstance(reward, RewardSpec) else RewardSpec("pickscore", path=str(reward))]
    return dataclasses.replace(config, rewards=rewards, objective=objective)


def refine_one_step(
    reference: Path, warm_start: Path, loop: RefineLoop, t_init: int, output_dir: Path
) -> tuple[UNet2DConditionModel, list[dict[str, float]]]:
    """Stage 2 of the module docstring: the ``loop.method`` preset from ``warm_start``; the trained UNet and log."""
    if PRESETS.get(loop.method, {}).get("reward_scale", 1.0) != 0.0:
        raise ValueError(f"one_step_refine.method must be a reward-free preset (dmd2, sim), got {loop.method!r}")
    objective = preset(loop.method, guidance_scale=loop.guidance_scale)
    prompts = sample_prompts(loop.train_prompts, loop.seed)
    config = train_config(
        reference, objective, loop, prompts, output_dir, t_init, generator_init=warm_start, progress_bar=False
    )
    backend, records = train(config)
    return backend.generator.eval(), records


def one_step_model(reference: Path, generator: Path, t_init: int, name: str, device: str = "cpu") -> BackendModel:
    """The one-step generator saved in ``generator`` on the ``reference`` folder, as an image model named ``name``."""
    from distar.backends import build_backend

    model = ModelConfig(family="sd", pretrained=str(reference), t_init=t_init, generator_init=str(generator))
    with quiet_transformers():  # the world's own models load without transformers' reports and bars
        return BackendModel(build_backend(model, device=torch.device(device)), name)


def train(config: TrainConfig, resume: str | None = None) -> tuple[Backend, list[dict[str, float]]]:
    """Run the trainer (``resume``: as :meth:`Trainer.train`'s); the trained backend and the records of
    the steps it ran.

    The world's own models load without transformers' load reports and bars (the import of diffusers'
    pipelines, the first in a worker, also prints transformers' notices that torchvision is absent).
    """
    with quiet_transformers():
        from distar.train.build import build_trainer

        trainer = build_trainer(config)
    records = trainer.train(resume=resume)
    return trainer.backend, records

