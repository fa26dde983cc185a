"""Algorithm 1 of Diff-Instruct* (docs/math.md §7) on accelerate, for any Backend.

Each training step makes ``loop.assistant_steps`` assistant updates (DSM, Eq. 2.2, on detached
generator samples) and then one generator update (Eq. 3.4, plus 3.6-3.7 in outer-CFG mode), with
separate AdamW optimisers and LR schedules. The losses themselves are
:func:`~distar.train.algorithm.assistant_losses` and :func:`~distar.train.algorithm.generator_losses`;
this module averages their per-sample ``"loss"``, back-propagates, clips, steps, keeps the EMA and
logs the batch mean of every term.

Each backward computes weight gradients only for the network being updated (``inputs=``): the
generator loss's graph runs through the assistant and the reference (Theorem 3.1), but their weights
get no gradient. Each update frees its gradients, stepped or skipped, so every backward starts from none.

Accelerate provides devices, DDP/FSDP (``accelerate launch`` / ``torchrun``), autocast and the
optimiser/scheduler state of checkpoints. All random draws (prompt order aside) come from the
global generators, seeded with ``seed`` on every process (``loop.global_draws``: each process keeps its
slice of the global batch's draws, so N processes at batch b train as one at N·b) or with
``seed + rank``; checkpoints store them so a resumed run continues the exact loss sequence of an
uninterrupted one.

An update whose loss or gradient norm is not finite is skipped (no optimiser or EMA step) and
counted; ``loop.max_bad_steps`` consecutive steps with a skipped update stop the run. The check is
one scalar per update, fused from the loss and the norm.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import ProjectConfiguration, parse_flag_from_env, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from distar.backends.lora import save_checkpoint_lora
from distar.config import ConfigError, config_yaml, save_config, to_dict
from distar.errors import HackingAlarm, RunError, first_line
from distar.io import write_atomic
from distar.objectives.di_star import DIStarLoss
from distar.protocols import Backend
from distar.rewards.base import Reward
from distar.train import checkpoint as ckpt
from distar.train.algorithm import BatchPart, assistant_losses, generator_losses
from distar.train.config import OptimizerConfig, TrainConfig
from distar.train.data import PromptStream
from distar.train.logs import JsonlLog, image_grid, peak_memory_mib, save_png
from distar.train.monitor import BEST_DIR, Monitor, held_out_split, load_monitor_models, reference_images
from distar.train.nodes import Nodes
from distar.train.preemption import StopSignals
from distar.train.runfolder import TENSORBOARD, RunLock, check_new_run_folder, clear_run, record_written

logger = logging.getLogger(__name__)

#: Per-step record keys that are measurements of the machine, not of the optimisation.
TIMING_KEYS = ("time/step_s", "time/samples_per_s", "time/images_per_s", "mem/peak_mib")


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
        raise ConfigError("DeepSpeed is not supported: launch with DDP (--multi_gpu) or FSDP (--use_fsdp), or one device")
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


class Trainer:
    """Trains ``backend.generator`` (and its assistant) with Algorithm 1.

    ``backend`` and ``reward`` must already be on the accelerator's device (``distar train`` builds
    them there); ``reward`` may be None when ``objective.reward_scale`` is 0. ``prompts`` is the full
    training set: each process draws its own shard. ``train()`` returns one record per step.
    """

    def __init__(
        self,
        config: TrainConfig,
        backend: Backend,
        reward: Reward | None,
        prompts: Sequence[str],
        *,
        accelerator: Accelerator | None = None,
    ) -> None:
        if config.objective.reward_scale != 0.0 and reward is None:
            raise ConfigError(f"objective.reward_scale is {config.objective.reward_scale:g} but no reward is given")
        self.config = config
        self.backend = backend
        self.reward = reward
        self.loss = DIStarLoss(config.objective)
        self.accelerator = acc = accelerator or make_accelerator(config)
        self.output_dir = Path(config.output_dir)
        self.nodes = Nodes.detect(acc, self.output_dir)  # who writes which run folder (train/nodes.py)
        shared = config.loop.global_draws
        set_seed(config.seed + (0 if shared else acc.process_index))
        self.part = BatchPart(acc.process_index, acc.num_processes) if shared else BatchPart()
        prompts, held_out = held_out_split(prompts, config.monitor, seed=config.seed)
        self.monitor = self._make_monitor(held_out, reward)
        self.data = PromptStream(
            prompts,
            config.data.batch_size,
            seed=config.seed,
            shuffle=config.data.shuffle,
            rank=acc.process_index,
            world_size=acc.num_processes,
        )
        self.sample_prompts = list(config.sampling.prompts) or list(prompts[:4])

        # Trainable parameters and their state_dict names, taken before any DDP/FSDP wrapping.
        self.generator_params = [p for p in backend.generator_parameters() if p.requires_grad]
        self.assistant_params = [p for p in backend.assistant_parameters() if p.requires_grad]
        if not self.generator_params or not self.assistant_params:
            raise ValueError("the backend's generator and assistant must both have trainable parameters")
        self.generator_names = ckpt.parameter_names(backend.generator, self.generator_params)
        self.assistant_names = ckpt.parameter_names(backend.assistant, self.assistant_params)
        self.fsdp = acc.distributed_type == DistributedType.FSDP
        if self.fsdp and config.ema.enabled:
            raise ConfigError("ema.decay: EMA is not supported with FSDP (parameters are sharded); set it to 0")

        optim, steps = config.optim, config.loop.max_steps
        optimizers = [
            self._make_optimizer(self.generator_params, optim.generator),
            self._make_optimizer(self.assistant_params, optim.assistant),
        ]
        schedulers = [
            get_scheduler(c.lr_schedule, opt, num_warmup_steps=c.warmup_steps, num_training_steps=steps)
            for c, opt in zip((optim.generator, optim.assistant), optimizers)
        ]
        (
            backend.generator,
            backend.assistant,
            self.generator_optimizer,
            self.assistant_optimizer,
            self.generator_scheduler,
            self.assistant_scheduler,
        ) = acc.prepare(backend.generator, backend.assistant, *optimizers, *schedulers)
        # What each backward differentiates: the wrapped modules' trainable parameters (FSDP flattens them).
        self._generator_inputs = [p for p in backend.generator.parameters() if p.requires_grad]
        self._assistant_inputs = [p for p in backend.assistant.parameters() if p.requires_grad]
        # Trainable weights are written by `save_checkpoint` as safetensors, not by accelerate.
        if not self.fsdp:
            acc.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
            acc.register_load_state_pre_hook(lambda models, input_dir: models.clear())

        ema = config.ema
        self.ema = (
            EMAModel(
                self.generator_params,
                decay=ema.decay,
                update_after_step=ema.update_after_step,
                use_ema_warmup=ema.warmup,
                inv_gamma=ema.inv_gamma,
                power=ema.power,
                foreach=True,
            )
            if ema.enabled
            else None
        )
        self.step = 0
        self.bad_steps = 0  # steps with a skipped (non-finite) update, in total ...
        self.consecutive_bad_steps = 0  # ... and in a row up to the current step
        self._skipped: list[str] = []  # the updates skipped in the current step
        self.log = JsonlLog(self.output_dir / ckpt.LOG_FILE)
        self._sampling = config.sampling.every > 0
        self.stop_signals = StopSignals(config.loop.stop_signals, last_checkpoint=self._last_checkpoint)

    def _make_monitor(self, held_out: list[str], reward: Reward | None) -> Monitor | None:
        """The held-out monitor (:mod:`distar.train.monitor`), or None when it is off or cannot run."""
        monitor_config = self.config.monitor
        self.monitor_every = monitor_config.interval(self.config.loop.max_steps)
        if not self.monitor_every:
            return None
        if not held_out:
            logger.info(
                "monitor off: %d held-out prompts need %d distinct training prompts (set monitor.prompts to a "
                "prompt file or a smaller count; monitor.every=0 silences this)",
                monitor_config.prompts,
                4 * monitor_config.prompts,
            )
            return None
        judges, metrics = (
            load_monitor_models(monitor_config, self.accelerator.device) if self.accelerator.is_main_process else ([], [])
        )
        return Monitor(
            monitor_config, output_dir=self.output_dir, prompts=held_out, reward=reward, judges=judges, metrics=metrics
        )

    def _make_optimizer(self, params: list[nn.Parameter], config: OptimizerConfig) -> torch.optim.Optimizer:
        """The optimiser of one network's trainable ``params`` (:func:`make_optimizer`)."""
        return make_optimizer(params, config, self.config.optim.use_8bit_adam)

    # ------------------------------------------------------------------ Algorithm 1

    def _batch(self) -> tuple[list[str], object, Tensor]:
        """Prompts c, their conditioning and generator noise z for one update."""
        prompts = self.data.next_batch()
        z = self.part.draw(self.backend.sample_latents, len(prompts))
        return prompts, self.backend.encode_prompts(prompts), z

    def _update(
        self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer, config: OptimizerConfig, loss: Tensor
    ) -> tuple[Tensor, bool]:
        """Clip the gradients of ``module`` (after backward) and step ``optimizer`` unless the loss or
        the gradient norm is not finite, then free the gradients. Returns the norm before clipping and
        whether the step was made.

        The check is one fused scalar (all-reduced over processes, so every rank decides alike). The
        wrapped module's own parameters are passed so accelerate can use FSDP's sharded clipping; with
        ``max_grad_norm: null`` the norm is measured but nothing is clipped. Under fp16 a gradient
        overflow with a finite loss is the grad scaler's to skip: not a bad update.
        """
        acc = self.accelerator
        norm = acc.clip_grad_norm_(module.parameters(), config.max_grad_norm or math.inf).detach().float()
        scaler = getattr(acc, "scaler", None)
        probe = loss.detach().float() if scaler is not None else loss.detach().float() + norm
        bad = (~torch.isfinite(probe)).float()
        if acc.num_processes > 1:
            bad = acc.reduce(bad, "sum")
        if bool(bad > 0):
            if scaler is not None:
                scaler.update()  # the scaler already unscaled these gradients; reset it for the next step
            self._skipped.append(name)
            stepped = False
        else:
            optimizer.step()
            stepped = not (scaler is not None and optimizer.step_was_skipped)
        optimizer.zero_grad(set_to_none=True)
        return norm, stepped

    def _assistant_unsynced(self) -> contextlib.AbstractContextManager:
        """The generator loss runs through the assistant (Theorem 3.1) but its backward leaves no ∇ψ;
        under DDP the assistant's forward must then not arm a gradient all-reduce."""
        assistant = self.backend.assistant
        return assistant.no_sync() if isinstance(assistant, DistributedDataParallel) else contextlib.nullcontext()

    def _accumulated(
        self, module: nn.Module, losses: Callable[[], dict[str, Tensor]], inputs: list[nn.Parameter]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Back-propagate ``losses()`` into ``inputs`` (the parameters being updated, so no weight
        gradients are made for the other networks) over ``loop.gradient_accumulation_steps``
        micro-batches, each loss divided by their number: the gradient of the mean over all their samples.

        Gradients are all-reduced (DDP) on the last micro-batch only. Returns the mean loss and the
        mean of every logged term."""
        acc, k = self.accelerator, self.config.loop.gradient_accumulation_steps
        total, logs = [], []
        for i in range(k):
            with acc.no_sync(module) if i < k - 1 else contextlib.nullcontext():
                with acc.autocast():
                    terms = losses()
                loss = terms["loss"].float().mean()
                acc.backward(loss / k, inputs=inputs)
            total.append(loss.detach())
            logs.append(terms)
        means = {key: torch.stack([t[key].detach().float().mean() for t in logs]).mean() for key in logs[0]}
        return torch.stack(total).mean(), means

    def train_step(self) -> dict[str, Tensor]:
        """One iteration of Algorithm 1; returns the batch mean of every loss term (0-dim tensors)."""
        config, backend = self.config, self.backend

        def assistant_terms() -> dict[str, Tensor]:
            _, cond, z = self._batch()
            return assistant_losses(backend, cond, z, objective=config.objective, part=self.part)

        def generator_terms() -> dict[str, Tensor]:
            prompts, cond, z = self._batch()
            return generator_losses(
                backend, cond, z, prompts=prompts, reward=self.reward, loss=self.loss, part=self.part
            )

        # 1. Assistant: k DSM steps on x0 = sg(g_θ(z, c)); ψ ← ψ − η_ψ ∇_ψ DSM(ψ).
        self._skipped = []
        assistant_logs: list[dict[str, Tensor]] = []
        for _ in range(config.loop.assistant_steps):
            loss, means = self._accumulated(backend.assistant, assistant_terms, self._assistant_inputs)
            logs = {f"assistant/{k}": v for k, v in means.items()}
            logs["assistant/grad_norm"], _ = self._update(
                "assistant", backend.assistant, self.assistant_optimizer, config.optim.assistant, loss
            )
            assistant_logs.append(logs)
        self.assistant_scheduler.step()

        # 2. Generator: x0 = g_θ(z, c), L = −α r + w(t)·divergence [+ α_cfg L_cfg]; θ ← θ − η_θ ∇_θ L.
        with self._assistant_unsynced():
            # ∇θ only: no weight gradients for ψ or the reference
            loss, means = self._accumulated(backend.generator, generator_terms, self._generator_inputs)
        logs = {k: torch.stack([d[k] for d in assistant_logs]).mean() for k in assistant_logs[0]}
        logs.update({f"generator/{k}": v for k, v in means.items()})
        logs["generator/grad_norm"], stepped = self._update(
            "generator", backend.generator, self.generator_optimizer, config.optim.generator, loss
        )
        self.generator_scheduler.step()
        if self.ema is not None and stepped:
            self.ema.step(self.generator_params)
        self.step += 1
        self._count_bad_step(logs)
        return logs

    def _count_bad_step(self, logs: dict[str, Tensor]) -> None:
        """Count the step as bad if an update was skipped (logging its terms); reset the run of bad steps otherwise."""
        if not self._skipped:
            self.consecutive_bad_steps = 0
            return
        self.bad_steps += 1
        self.consecutive_bad_steps += 1
        terms = ", ".join(f"{k} {v.item():.4g}" for k, v in logs.items())
        logger.warning(
            "step %d: skipped %d non-finite update(s) (%s): %s [%d in a row, %d in total]",
            self.step, len(self._skipped), ", ".join(self._skipped), terms,
            self.consecutive_bad_steps, self.bad_steps,
        )

    # ------------------------------------------------------------------ the run

    def train(self, resume: str | None = None, *, overwrite: bool = False) -> list[dict[str, float]]:
        """Run (or, with ``resume`` = ``"latest"`` or a checkpoint path, continue) to ``loop.max_steps``.

        The main process (with node-local run folders, each node's first, :mod:`distar.train.nodes`) locks
        the run folder for the run (:mod:`distar.train.runfolder`): a folder another run is writing is refused. A folder that already holds a run is refused unless ``resume`` is given
        or ``overwrite`` (which removes only the files the old run wrote, see
        :func:`~distar.train.runfolder.clear_run`). A stop signal saves the step reached and raises
        :class:`~distar.errors.Preempted` (:mod:`distar.train.preemption`). Returns the records of
        the steps run by this call (also appended to ``log.jsonl``, including every step up to each
        checkpoint). Raises :class:`~distar.errors.RunError` when ``loop.max_bad_steps`` steps in a row
        are non-finite, when the run ends on a step with a skipped (non-finite) update, or when a
        checkpoint cannot be written.
        """
        acc, config = self.accelerator, self.config
        lock = RunLock(self.output_dir)
        with self.stop_signals:  # from here on a stop signal saves the step the run reaches
            self.nodes.run(acc, lock.acquire)  # one writer per run folder holds its lock
            try:
                self._prepare_folder(resume, overwrite)
                if acc.is_main_process:
                    self.output_dir.mkdir(parents=True, exist_ok=True)
                    tracker_files = [TENSORBOARD] if config.logging.trackers else []
                    record_written(self.output_dir, ckpt.CONFIG_FILE, ckpt.LOG_FILE, *tracker_files)
                    write_atomic(self.output_dir / ckpt.CONFIG_FILE, config_yaml(config).encode())
                    self.log.truncate_after(self.step)
                    if self.monitor is not None:
                        self.monitor.resume(self.step)
                acc.init_trackers(config.logging.project, init_kwargs={"wandb": {"config": to_dict(config)}})
                for tracker in acc.trackers:
                    if tracker.name == "tensorboard":  # the resolved config as hyper-parameters
                        tracker.store_init_configuration(_flat_config(to_dict(config)))
                try:
                    records = self._run()
                finally:
                    if self.monitor is not None and acc.is_main_process:
                        self.monitor.draw()
                    acc.end_training()
                if self.consecutive_bad_steps:
                    raise RunError(
                        f"finished at step {self.step}, but its last {self.consecutive_bad_steps} step(s) skipped "
                        f"non-finite updates: the weights may be useless; {self._last_checkpoint()}"
                    )
                return records
            except OSError as err:  # a full disk at config.yaml, log.jsonl or a sample grid
                where = err.filename or "a run file"
                raise RunError(f"could not write {where} ({err.strerror or err}); {self._last_checkpoint()}") from None
            finally:
                lock.release()

    def _prepare_folder(self, resume: str | None, overwrite: bool) -> None:
        """Load the checkpoint to resume from (chosen by the writer of each run folder, the same step on
        every node), or make sure a new run does not mix with an old one."""
        if resume is not None and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        if resume is None:
            self.nodes.run(self.accelerator, lambda: check_new_run_folder(self.output_dir, overwrite=overwrite))
            if overwrite and self.nodes.writer:
                clear_run(self.output_dir)
        elif (path := self.nodes.resolve(self.accelerator, resume, self.output_dir)) is None:
            logger.info("no checkpoint in %s yet: starting a new run", self.output_dir)
        else:
            self.load_checkpoint(path)
        if self.nodes.writer:
            ckpt.remove_leftovers(self.output_dir)
        self.accelerator.wait_for_everyone()

    def _run(self) -> list[dict[str, float]]:
        acc, config = self.accelerator, self.config
        every = config.sampling.every
        if self._sampling and self.step == 0:
            self.sample()
        if self.monitor is not None and self.step == 0:
            self.monitor_step()
        records: list[dict[str, float]] = []
        window: list[tuple[dict[str, Tensor], float, float, int]] = []
        bar = tqdm(
            total=config.loop.max_steps,
            initial=self.step,
            desc="train",
            disable=not (acc.is_main_process and config.logging.progress_bar),
            dynamic_ncols=True,
        )
        busy = 0.0  # seconds spent in train_step this window (sampling and checkpoints excluded)
        while self.step < config.loop.max_steps:
            lrs = (self.generator_scheduler.get_last_lr()[0], self.assistant_scheduler.get_last_lr()[0])
            start = time.perf_counter()
            window.append((self.train_step(), *lrs, len(self._skipped)))
            busy += time.perf_counter() - start
            ckpt.kill_point("step", self.step)
            preempted = self.stop_signals.agreed(acc)  # a stop signal: save this step, then stop
            bar.update(1)
            last = self.step == config.loop.max_steps
            saving = config.checkpointing
            save = (saving.every and self.step % saving.every == 0) or (last and saving.save_final) or preempted
            stop = self.consecutive_bad_steps >= config.loop.max_bad_steps
            # A checkpoint's step must be in log.jsonl before the checkpoint exists: flush first.
            if self.step % config.logging.every == 0 or last or save or stop:
                flushed = self._flush(window, busy / len(window))
                bar.set_postfix({k: f"{v:.4g}" for k, v in flushed[-1].items() if k.endswith("/loss")})
                records += flushed
                window, busy = [], 0.0
            if stop:
                bar.close()
                raise RunError(
                    f"stopped at step {self.step}: {self.consecutive_bad_steps} steps in a row with a non-finite "
                    f"loss or gradient norm (loop.max_bad_steps = {config.loop.max_bad_steps}); {self._last_checkpoint()}"
                )
            if self._sampling and self.step % every == 0:
                self.sample()
            if self.monitor is not None and self.step % self.monitor_every == 0:
                self.monitor_step()  # before the checkpoint: a checkpoint's step has its monitor record
            if save:
                saved = self.save_checkpoint()
                if preempted and not last:
                    bar.close()
                    raise self.stop_signals.stopped(self.step, saved)
        bar.close()
        return records

    def _flush(self, window: list[tuple[dict[str, Tensor], float, float, int]], step_seconds: float) -> list[dict]:
        """Average the window's per-step terms over processes, write records, log window means.

        A step with skipped updates has ``skipped_updates`` in its record."""
        acc = self.accelerator
        keys = list(window[0][0])
        values = acc.reduce(torch.stack([torch.stack([entry[0][k] for k in keys]) for entry in window]), "mean")
        first = self.step - len(window) + 1
        records = [
            {"step": first + i, **dict(zip(keys, row)), "lr/generator": lr_g, "lr/assistant": lr_a}
            | ({"skipped_updates": skipped} if skipped else {})
            for i, (row, (_, lr_g, lr_a, skipped)) in enumerate(zip(values.tolist(), window))
        ]
        config = self.config
        samples = config.data.batch_size * config.loop.gradient_accumulation_steps * acc.num_processes  # per update
        records[-1].update({
            "time/step_s": step_seconds,
            "time/samples_per_s": samples / step_seconds,  # prompts of the generator updates
            "time/images_per_s": samples * (1 + config.loop.assistant_steps) / step_seconds,  # generator samples made
            "mem/peak_mib": peak_memory_mib(acc.device),
        })
        if acc.is_main_process:
            self.log.write(records)
            means = {k: sum(r[k] for r in records) / len(records) for k in keys}
            lrs = {k: records[-1][k] for k in ("lr/generator", "lr/assistant")}
            acc.log({**means, **lrs, **{k: records[-1][k] for k in TIMING_KEYS}}, step=self.step)
        return records

    # ------------------------------------------------------------------ sample grids

    @torch.no_grad()
    def _images(self, prompts: Sequence[str], seeds: Sequence[int], *, ema: bool = False) -> Tensor:
        """Decoded generator samples of each (prompt, seed) pair, z drawn from the seed; on all processes.

        With ``ema`` the EMA weights make them. The global random state is left as it was, so a run
        draws the same training noise whether or not it samples."""
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        out = []
        with torch.random.fork_rng(devices=devices), contextlib.ExitStack() as stack:
            torch.manual_seed(self.config.seed)  # a few-step generator's re-noising: the same at every call
            if ema:
                self.ema.store(self.generator_params)
                self.ema.copy_to(self.generator_params)
                stack.callback(self.ema.restore, self.generator_params)
            batch = self.config.monitor.batch_size
            for i in range(0, len(prompts), batch):
                chunk = list(prompts[i : i + batch])
                z = torch.cat([self.backend.sample_latents(1, torch.Generator().manual_seed(s)) for s in seeds[i : i + batch]])
                with self.accelerator.autocast():
                    out.append(self.backend.decode(self.backend.sample(z, self.backend.encode_prompts(chunk))).float())
        return torch.cat(out)

    def _sample_images(self, *, ema: bool = False) -> Tensor:
        """The sample grid's images, prompt-major."""
        seeds = self.config.sampling.seeds
        return self._images([p for p in self.sample_prompts for _ in seeds], list(seeds) * len(self.sample_prompts), ema=ema)

    def sample(self) -> None:
        """Write ``samples/step-<step>.png`` (and ``-ema``) grids: rows = prompts, columns = seeds.

        Runs on every process (the generator may be sharded); backends whose ``decode`` does not
        give (B, 3, H, W) images turn sampling off."""
        grids = {"samples": self._sample_images()}
        images = grids["samples"]
        if images.dim() != 4 or images.shape[1] != 3:
            logger.info("decode gives %s, not images: sample grids are off", tuple(images.shape))
            self._sampling = False
            return
        if self.ema is not None and self.config.sampling.use_ema:
            grids["samples_ema"] = self._sample_images(ema=True)
        if not self.accelerator.is_main_process:
            return
        folder = self.output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        for name, images in grids.items():
            grid = image_grid(images.clamp(0, 1), rows=len(self.sample_prompts))
            suffix = "-ema" if name.endswith("ema") else ""
            record_written(self.output_dir, f"samples/step-{self.step:06d}{suffix}.png")
            save_png(grid, folder / f"step-{self.step:06d}{suffix}.png")
            for tracker in self.accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.log_images({name: grid[None]}, step=self.step)
                elif tracker.name == "wandb":
                    tracker.log_images({name: [grid.permute(1, 2, 0).cpu().numpy()]}, step=self.step)

    # ------------------------------------------------------------------ held-out monitor

    def _reference_images(self, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """The reference's own multi-step images of the held-out pairs (DDIM, CFG ω), for the drift."""
        from distar.diffusion import cfg_combine
        from distar.diffusion.sampler import ddim_sample

        monitor_config, backend = self.config.monitor, self.backend
        omega = monitor_config.drift_guidance
        if omega is None:
            omega = self.config.objective.guidance_scale
        out, batch = [], monitor_config.batch_size
        for i in range(0, len(prompts), batch):
            cond = backend.encode_prompts(list(prompts[i : i + batch]))
            z = torch.cat([backend.sample_latents(1, torch.Generator().manual_seed(s)) for s in seeds[i : i + batch]])

            def x0_fn(x_t: Tensor, t: Tensor) -> Tensor:
                if omega == 1.0:
                    return backend.reference_x0(x_t, t, cond)
                return cfg_combine(*backend.reference_x0_cond_uncond(x_t, t, cond), omega)

            with self.accelerator.autocast():
                out.append(backend.decode(ddim_sample(x0_fn, backend.schedule, z, monitor_config.drift_steps)).float().cpu())
        return torch.cat(out)

    def monitor_step(self) -> None:
        """Monitor the held-out images of this step (:mod:`distar.train.monitor`): record, then act on
        the decision: keep ``best/``, log the alarm, stop the run on it with ``monitor.stop``."""
        acc, monitor, monitor_config = self.accelerator, self.monitor, self.config.monitor
        prompts, seeds = monitor.pairs
        images = {"generator": self._images(prompts, seeds)}
        if images["generator"].dim() != 4 or images["generator"].shape[1] != 3:
            logger.info("decode gives %s, not images: the monitor is off", tuple(images["generator"].shape))
            self.monitor = None
            return
        if self.ema is not None and monitor_config.use_ema:
            images["ema"] = self._images(prompts, seeds, ema=True)
        decision = [None]
        if acc.is_main_process:
            if monitor_config.drift_steps and monitor.reference_features is None:
                drift = [monitor_config.drift_steps, monitor_config.drift_guidance, self.config.objective.guidance_scale]
                key = json.dumps([prompts, seeds, *drift, to_dict(self.config.model)], default=str)
                cache = Path(monitor_config.reference_images or self.output_dir / "monitor" / "reference.safetensors")
                if monitor_config.reference_images is None:
                    record_written(self.output_dir, "monitor/reference.safetensors", "monitor/reference.json")
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    monitor.set_reference(reference_images(cache=cache, key=key, make=lambda: self._reference_images(prompts, seeds)))
            decided, means = monitor.record(self.step, images)
            decision = [decided]
            monitor.save_grid_images(self.step, images["ema" if "ema" in images else "generator"])
            acc.log({f"monitor/{k}": v for k, v in means["generator"].items()}, step=self.step)
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(decision)
        if decision[0]["alarm"]:
            logger.warning(decision[0]["alarm"])
        if decision[0]["best"]:
            self.save_checkpoint(folder=BEST_DIR)
            if acc.is_main_process:
                monitor.write_best(self.step)
        if decision[0]["alarm"] and monitor_config.stop:
            path = self.save_checkpoint()
            raise HackingAlarm(f"{decision[0]['alarm']}; stopped (monitor.stop) after saving {path}")

    # ------------------------------------------------------------------ checkpoints

    def _trainable_state(self, module: nn.Module, names: list[str]) -> dict[str, Tensor]:
        """The trainable subset of the unwrapped module's state_dict (gathered under FSDP)."""
        state = self.accelerator.get_state_dict(module)
        return {name: state[name] for name in names} if state else {}

    def save_checkpoint(self, folder: str | None = None) -> Path:
        """Write ``checkpoint-<step>/`` (or the run folder's ``folder``, never pruned) atomically and prune old
        ones (see :mod:`distar.train.checkpoint`).

        Non-finite weights are never written, and a failed write (a full disk) leaves the earlier
        checkpoints as they were; both raise :class:`~distar.errors.RunError`.
        """
        acc, config = self.accelerator, self.config
        final = self.output_dir / (folder or f"{ckpt.CHECKPOINT_PREFIX}{self.step}")
        tmp = self.output_dir / f".{final.name}.tmp"
        generator = self._trainable_state(self.backend.generator, self.generator_names)
        assistant = self._trainable_state(self.backend.assistant, self.assistant_names)
        tensors = {ckpt.GENERATOR_FILE: generator, ckpt.ASSISTANT_FILE: assistant}
        state = {
            "step": self.step,
            "world_size": acc.num_processes,
            "data": self.data.state_dict(),
            "bad_steps": self.bad_steps,
            "consecutive_bad_steps": self.consecutive_bad_steps,
        }
        if self.ema is not None:
            ema_state = self.ema.state_dict()
            tensors[ckpt.GENERATOR_EMA_FILE] = dict(zip(self.generator_names, ema_state.pop("shadow_params")))
            state["ema"] = ema_state
        if not ckpt.all_finite(t for group in tensors.values() for t in group.values()):
            bad = [name for name, group in tensors.items() if not ckpt.all_finite(group.values())]
            raise RunError(
                f"step {self.step}: non-finite weights in {', '.join(bad)}: {final.name} not written; "
                f"{self._last_checkpoint()}"
            )
        try:
            if self.nodes.writer:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            acc.save_state(str(tmp))
            (tmp / ckpt.rng_state_file(acc.process_index)).write_text(json.dumps(ckpt.rng_state()))
            if self.nodes.writer:
                for name, group in tensors.items():
                    ckpt.save_tensors(group, tmp / name)
                    ckpt.kill_point("checkpoint-write", self.step)
                save_checkpoint_lora(self.backend.generator, tmp, generator, tensors.get(ckpt.GENERATOR_EMA_FILE))
                save_config(config, tmp / ckpt.CONFIG_FILE)
                (tmp / ckpt.TRAINER_STATE_FILE).write_text(json.dumps(state, indent=1))
            acc.wait_for_everyone()
            if self.nodes.writer:
                ckpt.write_manifest(tmp)
                ckpt.replace_dir(tmp, final)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunError(f"could not write {final} ({err.strerror or err}); {self._last_checkpoint()}") from None
        if self.nodes.writer and folder is None:
            ckpt.prune_checkpoints(self.output_dir, config.checkpointing.total_limit)
        acc.wait_for_everyone()
        return final

    def _last_checkpoint(self) -> str:
        """Which checkpoint a stopped run leaves to resume from, for its error message."""
        found = ckpt.list_checkpoints(self.output_dir)
        return f"last checkpoint: {found[-1][1]}" if found else "no checkpoint was written"

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, optimisers, schedulers, EMA, data position, counters and RNG from ``path``.

        The folder should have passed :func:`~distar.train.checkpoint.verify_checkpoint`; anything
        in it that cannot be used raises a one-line :class:`~distar.train.checkpoint.CheckpointError`.
        """
        acc, path = self.accelerator, Path(path)
        state = _trainer_state(path, self.config.loop.max_steps)
        if state["world_size"] != acc.num_processes:
            logger.warning(
                "checkpoint was written by %d processes, resuming with %d: prompt order changes",
                state["world_size"],
                acc.num_processes,
            )
        try:
            acc.load_state(str(path))
        except (pickle.UnpicklingError, RuntimeError, KeyError, ValueError, OSError, EOFError) as err:
            reason = first_line(err)[:200]
            raise ckpt.CheckpointError(f"{path}: optimizer/scheduler state cannot be loaded ({reason})") from None
        if not self.fsdp:
            for params, names, file in (
                (self.generator_params, self.generator_names, ckpt.GENERATOR_FILE),
                (self.assistant_params, self.assistant_names, ckpt.ASSISTANT_FILE),
            ):
                with torch.no_grad():
                    for p, value in zip(params, ckpt.load_tensors(path / file, dict(zip(names, params)))):
                        p.copy_(value)
        if self.ema is not None:
            if "ema" not in state:
                raise ckpt.CheckpointError(f"ema.decay is set but {path} has no EMA weights")
            expected = dict(zip(self.generator_names, self.generator_params))
            shadow = ckpt.load_tensors(path / ckpt.GENERATOR_EMA_FILE, expected)
            self.ema.load_state_dict({**state["ema"], "shadow_params": shadow})
            self.ema.to(acc.device)
        self.data.load_state_dict(state["data"])
        self.step = state["step"]
        self.bad_steps = state.get("bad_steps", 0)
        self.consecutive_bad_steps = state.get("consecutive_bad_steps", 0)
        rng_file = path / ckpt.rng_state_file(acc.process_index)
        if rng_file.is_file():
            try:
                ckpt.set_rng_state(ckpt.read_json(rng_file))
            except (KeyError, ValueError, TypeError, RuntimeError):
                raise ckpt.CheckpointError(f"{rng_file}: not an RNG state") from None
        else:
            logger.warning("%s missing: random draws will differ from an uninterrupted run", rng_file.name)
        logger.info("resumed from %s at step %d", path, self.step)
        if self.step == self.config.loop.max_steps:
            logger.info("%s is at loop.max_steps = %d: nothing left to train", path.name, self.step)


def _flat_config(data: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as dotted keys with scalar values (lists and nulls as text), for tracker hparams."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _trainer_state(path: Path, max_steps: int) -> dict:
    """``trainer_state.json`` of checkpoint ``path``, with its fields checked."""
    file = path / ckpt.TRAINER_STATE_FILE
    state = ckpt.read_trainer_state(path)
    if type(state.get("world_size")) is not int or state["world_size"] < 1:
        raise ckpt.CheckpointError(f"{file}: needs a positive integer 'world_size'")
    if not isinstance(state.get("data"), dict) or type(state["data"].get("position")) is not int:
        raise ckpt.CheckpointError(f"{file}: needs 'data': {{'position': <int>}}")
    if state["step"] > max_steps:
        raise ckpt.CheckpointError(
            f"{file}: step {state['step']} is past loop.max_steps = {max_steps} (raise loop.max_steps to go on)"
        )
    return state
