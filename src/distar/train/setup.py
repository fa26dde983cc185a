"""The accelerator and optimisers of a training run: precision, device, trackers, AdamW, the EMA."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, parse_flag_from_env
from diffusers.training_utils import EMAModel
from torch import nn

from distar.config import ConfigError
from distar.train import distributed
from distar.train.config import EMAConfig, OptimizerConfig, TrainConfig
from distar.train.runfolder import TENSORBOARD

#: The module each accelerate tracker needs, and where to get it.
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "distar[tensorboard]"), "wandb": ("wandb", "distar[wandb]")}


def uses_cpu(config: TrainConfig) -> bool:
    """Whether the run is on the CPU (``loop.cpu``, or no GPU)."""
    return config.loop.cpu or not torch.cuda.is_available()


def check_precision(config: TrainConfig) -> None:
    """Refuse fp16 autocast on the CPU (accelerate would ignore it): one-line ConfigError."""
    precision = config.loop.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION")
    if precision == "fp16" and uses_cpu(config):
        raise ConfigError("loop.mixed_precision: fp16 needs a CUDA GPU; on the CPU use bf16 or no")


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The Accelerator for ``config``: precision, trackers, and CPU/gloo when no GPU is used.

    ``loop.mixed_precision: null`` leaves precision to accelerate (``accelerate launch`` and its
    config file). DeepSpeed is refused: the generator and assistant are trained by separate optimisers
    in one ``prepare``, which accelerate's DeepSpeed engine does not take. Schedulers step once per
    training step on every process (``step_scheduler_with_optimizer=False``), so warm-up lengths are in
    training steps whatever the number of processes.
    """
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError("DeepSpeed is not supported: launch with DDP (--multi_gpu), or FSDP (loop.fsdp=true), or one device")
    distributed.check_launch(config)
    trackers = config.logging.trackers
    for name in trackers:
        module, package = TRACKER_PACKAGES.get(name, (name, name))
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"logging.report_to: {name} needs the {module} package (pip install '{package}'), "
                "or set logging.report_to=none"
            )
    check_precision(config)
    if config.loop.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return Accelerator(
        mixed_precision=config.loop.mixed_precision,
        cpu=uses_cpu(config),
        log_with=trackers or None,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / TENSORBOARD)
        ),
        step_scheduler_with_optimizer=False,
    )


def make_optimizer(params: list[nn.Parameter], config: OptimizerConfig, use_8bit: bool) -> torch.optim.Optimizer:
    """AdamW (or bitsandbytes AdamW8bit) over ``params``."""
    kwargs = dict(lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, eps=config.eps)
    if not use_8bit:
        return torch.optim.AdamW(params, **kwargs)
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError("optim.use_8bit_adam: needs bitsandbytes (pip install 'distar[bnb]')") from None
    return bitsandbytes.optim.AdamW8bit(params, **kwargs)


def make_ema(params: list[nn.Parameter], config: EMAConfig, *, foreach: bool = True) -> EMAModel | None:
    """diffusers' EMA of ``params`` (the generator's trainable weights), or None when ``ema.decay`` is 0;
    ``foreach=False`` updates it one tensor at a time (sharded parameters have no foreach copy)."""
    if not config.enabled:
        return None
    return EMAModel(
        params,
        decay=config.decay,
        update_after_step=config.update_after_step,
        use_ema_warmup=config.warmup,
        inv_gamma=config.inv_gamma,
        power=config.power,
        foreach=foreach,
    )
