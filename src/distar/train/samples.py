"""The images a Trainer makes besides training: sample grids and the held-out monitor's passes.

``trainer`` is a :class:`~distar.train.loop.Trainer` throughout. Images are made on every process (the
generator may be sharded) from fixed seeds, without touching the run's random state.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from distar.config import to_dict
from distar.errors import HackingAlarm
from distar.protocols import BackendModel
from distar.train.logs import image_grid, save_png
from distar.train.monitor import BEST_DIR, Monitor, load_monitor_models, reference_images
from distar.train.runfolder import record_written
from distar.train.tracking import log_image

logger = logging.getLogger(__name__)


def _is_image_batch(images: Tensor, what: str) -> bool:
    """Whether ``images`` is (B, 3, H, W); logs that ``what`` is off otherwise."""
    if images.dim() == 4 and images.shape[1] == 3:
        return True
    logger.info("decode gives %s, not images: %s off", tuple(images.shape), what)
    return False


def generator_images(
    trainer: Any, prompts: Sequence[str], seeds: Sequence[int], *, batch_size: int | None = None, ema: bool = False
) -> Tensor:
    """Decoded generator samples of each (prompt, seed) pair, z drawn from the seed, ``batch_size`` pairs
    per forward pass (default ``sampling.batch_size``); on all processes.

    With ``ema`` the EMA weights make them. The images come from the one inference path for a live
    backend (:class:`~distar.protocols.BackendModel`), which leaves the global random state as it was, so
    a run draws the same training noise whether or not it samples."""
    acc = trainer.accelerator
    model = BackendModel(
        trainer.backend,
        "samples",
        renoise_seed=trainer.config.seed,  # a few-step generator's re-noising: the same at every call
        batch_size=batch_size or trainer.config.sampling.batch_size,
        device=acc.device,
        precision=acc.autocast,
    )
    with contextlib.ExitStack() as stack:
        if ema:
            trainer.ema.store(trainer.generator_params)
            trainer.ema.copy_to(trainer.generator_params)
            stack.callback(trainer.ema.restore, trainer.generator_params)
        return model.generate_images(prompts, seeds)


def write_sample_grids(trainer: Any) -> bool:
    """Write ``samples/step-<step>.png`` (and ``-ema``) grids, rows = prompts, columns = seeds, and send
    them to the trackers. Returns False (sampling should stop) when ``decode`` does not give (B, 3, H, W) images."""
    seeds, prompts = list(trainer.config.sampling.seeds), trainer.sample_prompts
    pairs = ([p for p in prompts for _ in seeds], seeds * len(prompts))  # prompt-major
    grids = {"samples": generator_images(trainer, *pairs)}
    if not _is_image_batch(grids["samples"], "sample grids are"):
        return False
    if trainer.ema is not None and trainer.config.sampling.use_ema:
        grids["samples_ema"] = generator_images(trainer, *pairs, ema=True)
    if not trainer.accelerator.is_main_process:
        return True
    folder = trainer.output_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    for name, images in grids.items():
        grid = image_grid(images.clamp(0, 1), rows=len(prompts))
        file = f"samples/step-{trainer.step:06d}{'-ema' if name.endswith('ema') else ''}.png"
        record_written(trainer.output_dir, file)
        save_png(grid, trainer.output_dir / file)
        log_image(trainer.accelerator, name, grid, trainer.step)
    return True


def drift_reference_images(trainer: Any, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
    """The reference's own multi-step images of the held-out pairs (DDIM, CFG ω), for the drift."""
    from distar.diffusion import cfg_combine
    from distar.diffusion.sampler import ddim_sample

    monitor_config, backend = trainer.config.monitor, trainer.backend
    omega = monitor_config.drift_guidance
    if omega is None:
        omega = trainer.config.objective.guidance_scale
    out, batch = [], monitor_config.batch_size
    for i in range(0, len(prompts), batch):
        cond = backend.encode_prompts(list(prompts[i : i + batch]))
        z = torch.cat([backend.sample_latents(1, torch.Generator().manual_seed(s)) for s in seeds[i : i + batch]])

        def x0_fn(x_t: Tensor, t: Tensor) -> Tensor:
            if omega == 1.0:
                return backend.reference_x0(x_t, t, cond)
            return cfg_combine(*backend.reference_x0_cond_uncond(x_t, t, cond), omega)

        with trainer.accelerator.autocast():
            out.append(backend.decode(ddim_sample(x0_fn, backend.schedule, z, monitor_config.drift_steps)).float().cpu())
    return torch.cat(out)


def make_monitor(trainer: Any, held_out: list[str]) -> Monitor | None:
    """The held-out monitor of ``held_out`` prompts (:mod:`distar.train.monitor`), or None when there are none."""
    monitor_config = trainer.config.monitor
    if not held_out:
        logger.info(
            "monitor off: %d held-out prompts need %d distinct training prompts (set monitor.prompts to a "
            "prompt file or a smaller count; monitor.every=0 silences this)",
            monitor_config.prompts,
            4 * monitor_config.prompts,
        )
        return None
    acc = trainer.accelerator
    judges, metrics = load_monitor_models(monitor_config, acc.device) if acc.is_main_process else ([], [])
    return Monitor(
        monitor_config, output_dir=trainer.output_dir, prompts=held_out, reward=trainer.reward, judges=judges, metrics=metrics
    )


def _set_drift_reference(trainer: Any, prompts: list[str], seeds: list[int]) -> None:
    """Give the monitor the reference's features of the held-out pairs (cached across runs by a key)."""
    monitor_config, config = trainer.config.monitor, trainer.config
    drift = [monitor_config.drift_steps, monitor_config.drift_guidance, config.objective.guidance_scale]
    key = json.dumps([prompts, seeds, *drift, to_dict(config.model)], default=str)
    cache = Path(monitor_config.reference_images or trainer.output_dir / "monitor" / "reference.safetensors")
    if monitor_config.reference_images is None:
        record_written(trainer.output_dir, "monitor/reference.safetensors", "monitor/reference.json")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        images = reference_images(cache=cache, key=key, make=lambda: drift_reference_images(trainer, prompts, seeds))
        trainer.monitor.set_reference(images)


def monitor_pass(trainer: Any) -> bool:
    """Monitor the held-out images of this step (:mod:`distar.train.monitor`): record, then act on
    the decision: keep ``best/``, log the alarm, stop the run on it with ``monitor.stop``
    (:class:`~distar.errors.HackingAlarm`). Returns False (the monitor should stop) when ``decode``
    does not give (B, 3, H, W) images."""
    acc, monitor, monitor_config, step = trainer.accelerator, trainer.monitor, trainer.config.monitor, trainer.step
    prompts, seeds = monitor.pairs
    images = {"generator": generator_images(trainer, prompts, seeds, batch_size=monitor_config.batch_size)}
    if not _is_image_batch(images["generator"], "the monitor is"):
        return False
    if trainer.ema is not None and monitor_config.use_ema:
        images["ema"] = generator_images(trainer, prompts, seeds, batch_size=monitor_config.batch_size, ema=True)
    decision: list[Any] = [None]
    means: dict[str, dict[str, float]] = {}
    if acc.is_main_process:
        if monitor_config.drift_steps and monitor.reference_features is None:
            _set_drift_reference(trainer, prompts, seeds)
        decided, means = monitor.record(
            step, images, after_write=lambda: trainer.callbacks.on_point(trainer, "monitor", step)
        )
        decision = [decided]
        monitor.save_grid_images(step, images["ema" if "ema" in images else "generator"])
        acc.log({f"monitor/{k}": v for k, v in means["generator"].items()}, step=step)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(decision)
    alarm = decision[0]["alarm"]
    if alarm:
        logger.warning(alarm)
    if decision[0]["best"]:
        trainer.save_checkpoint(folder=BEST_DIR)
        if acc.is_main_process:
            monitor.write_best(step)
    trainer.callbacks.on_monitor(trainer, {"step": step, **decision[0], "means": means})
    if alarm and monitor_config.stop:
        path = trainer.save_checkpoint()
        raise HackingAlarm(f"{alarm}; stopped (monitor.stop) after saving {path}")
    return True
