"""Algorithm 1 of Diff-Instruct* (docs/math.md §7) on accelerate, for any Backend.

Each training step makes ``loop.assistant_steps`` assistant updates (DSM, Eq. 2.2, on detached
generator samples) and then one generator update (Eq. 3.4, plus 3.6-3.7 in outer-CFG mode), with
separate AdamW optimisers and LR schedules. The losses themselves are
:func:`~distar.train.algorithm.assistant_losses` and :func:`~distar.train.algorithm.generator_losses`;
this module averages their per-sample ``"loss"``, back-propagates, steps (through the numerics guard,
:mod:`distar.train.guard`), keeps the EMA and logs the batch mean of every term.

Each backward computes weight gradients only for the network being updated (``inputs=``): the
generator loss's graph runs through the assistant and the reference (Theorem 3.1), but their weights
get no gradient. Each update frees its gradients, stepped or skipped, so every backward starts from none.

Accelerate provides devices, DDP (``accelerate launch`` / ``torchrun``), autocast and the
optimiser/scheduler state of checkpoints; ``loop.fsdp`` shards both networks with FSDP2 instead
(:mod:`distar.train.distributed`). All random draws (prompt order aside) come from the
global generators, seeded with ``seed`` on every process (``loop.global_draws``: each process keeps its
slice of the global batch's draws, so N processes at batch b train as one at N·b) or with
``seed + rank``; checkpoints store them so a resumed run continues the exact loss sequence of an
uninterrupted one.

The rest of a run lives beside this module: the accelerator and optimisers (:mod:`~distar.train.setup`),
records and trackers (:mod:`~distar.train.tracking`), sample grids and monitor passes
(:mod:`~distar.train.samples`), checkpoint state (:mod:`~distar.train.state`) and callbacks
(:mod:`~distar.train.callbacks`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from distar.config import ConfigError, config_yaml
from distar.errors import RunError
from distar.io import write_atomic
from distar.objectives.di_star import DIStarLoss
from distar.protocols import Backend
from distar.rewards.base import Reward
from distar.train import checkpoint as ckpt
from distar.train import distributed, samples, state
from distar.train.algorithm import BatchPart, assistant_losses, generator_losses
from distar.train.callbacks import Callback, CallbackList
from distar.train.config import TrainConfig
from distar.train.data import PromptStream
from distar.train.guard import NumericsGuard
from distar.train.monitor import held_out_split
from distar.train.nodes import Nodes
from distar.train.preemption import StopSignals
from distar.train.runfolder import TENSORBOARD, RunLock, check_new_run_folder, clear_run, record_written
from distar.train.setup import make_accelerator, make_ema, make_optimizer
from distar.train.tracking import StepLog, start_trackers

logger = logging.getLogger(__name__)


class Trainer:
    """Trains ``backend.generator`` (and its assistant) with Algorithm 1.

    ``backend`` and ``reward`` must already be on the accelerator's device (``distar train`` builds
    them there); ``reward`` may be None when ``objective.reward_scale`` is 0. ``prompts`` is the full
    training set: each process draws its own shard. ``callbacks`` (:class:`~distar.train.callbacks.Callback`)
    run at the moments of a run they override. ``train()`` returns one record per step.
    """

    def __init__(
        self,
        config: TrainConfig,
        backend: Backend,
        reward: Reward | None,
        prompts: Sequence[str],
        *,
        accelerator: Accelerator | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        if config.objective.reward_scale != 0.0 and reward is None:
            raise ConfigError(f"objective.reward_scale is {config.objective.reward_scale:g} but no reward is given")
        self.config = config
        self.backend = backend
        self.reward = reward
        self.loss = DIStarLoss(config.objective)
        self.accelerator = acc = accelerator or make_accelerator(config)
        self.callbacks = CallbackList(callbacks)
        self.output_dir = Path(config.output_dir)
        shared = config.loop.global_draws
        set_seed(config.seed + (0 if shared else acc.process_index))
        self.part = BatchPart(acc.process_index, acc.num_processes) if shared else BatchPart()
        prompts, held_out = held_out_split(prompts, config.monitor, seed=config.seed)
        self.monitor_every = config.monitor.interval(config.loop.max_steps)
        self.monitor = samples.make_monitor(self, held_out) if self.monitor_every else None
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
        for p in (*self.generator_params, *self.assistant_params):
            p.grad = None  # gradients a caller left (e.g. from its own fitting) would add to the first update's
        self.generator_names = ckpt.parameter_names(backend.generator, self.generator_params)
        self.assistant_names = ckpt.parameter_names(backend.assistant, self.assistant_params)
        self.fsdp = distributed.uses_fsdp(config, acc, monitored=self.monitor is not None)
        self.nodes = Nodes.detect(acc, self.output_dir, sharded=self.fsdp)  # who writes which run folder
        if self.fsdp:  # sharded in place (distar.train.distributed): the trainable parameters become DTensors
            self.generator_params = distributed.shard(backend.generator, self.generator_names, acc)
            self.assistant_params = distributed.shard(backend.assistant, self.assistant_names, acc)

        optim, steps = config.optim, config.loop.max_steps
        optimizers = [
            make_optimizer(self.generator_params, optim.generator, optim.use_8bit_adam),
            make_optimizer(self.assistant_params, optim.assistant, optim.use_8bit_adam),
        ]
        schedulers = [
            get_scheduler(c.lr_schedule, opt, num_warmup_steps=c.warmup_steps, num_training_steps=steps)
            for c, opt in zip((optim.generator, optim.assistant), optimizers)
        ]
        prepared = distributed.prepare(acc, backend.generator, backend.assistant, optimizers, schedulers, sharded=self.fsdp)
        backend.generator, backend.assistant, self.generator_optimizer, self.assistant_optimizer = prepared[:4]
        self.generator_scheduler, self.assistant_scheduler = prepared[4:]
        # What each backward differentiates: the wrapped modules' trainable parameters (unsharded under FSDP).
        self._generator_inputs = distributed.backward_inputs(backend.generator)
        self._assistant_inputs = distributed.backward_inputs(backend.assistant)
        # Trainable weights are written by `save_checkpoint` as safetensors, not by accelerate.
        if not self.fsdp:
            acc.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
            acc.register_load_state_pre_hook(lambda models, input_dir: models.clear())

        self.ema = make_ema(self.generator_params, config.ema, foreach=not self.fsdp)  # DTensors: no _foreach_copy_
        self.step = 0
        self.guard = NumericsGuard(acc, config.loop.max_bad_steps)
        self.log = StepLog(acc, config, self.output_dir / ckpt.LOG_FILE)
        self._sampling = config.sampling.every > 0
        self.stop_signals = StopSignals(config.loop.stop_signals, last_checkpoint=self._last_checkpoint)

    @property
    def bad_steps(self) -> int:
        """Steps with a skipped (non-finite) update, in total (:class:`~distar.train.guard.NumericsGuard`)."""
        return self.guard.bad_steps

    @property
    def consecutive_bad_steps(self) -> int:
        """Steps with a skipped update in a row, up to the current step."""
        return self.guard.consecutive_bad_steps

    # ------------------------------------------------------------------ Algorithm 1

    def _batch(self) -> tuple[list[str], object, Tensor]:
        """Prompts c, their conditioning and generator noise z for one update."""
        prompts = self.data.next_batch()
        z = self.part.draw(self.backend.sample_latents, len(prompts))
        return prompts, self.backend.encode_prompts(prompts), z

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
        config, backend, phase = self.config, self.backend, self.callbacks.on_phase

        def assistant_terms() -> dict[str, Tensor]:
            _, cond, z = self._batch()
            return assistant_losses(backend, cond, z, objective=config.objective, part=self.part)

        def generator_terms() -> dict[str, Tensor]:
            prompts, cond, z = self._batch()
            return generator_losses(
                backend, cond, z, prompts=prompts, reward=self.reward, loss=self.loss, part=self.part
            )

        # 1. Assistant: k DSM steps on x0 = sg(g_θ(z, c)); ψ ← ψ − η_ψ ∇_ψ DSM(ψ).
        self.guard.start_step()
        assistant_logs: list[dict[str, Tensor]] = []
        for _ in range(config.loop.assistant_steps):
            phase(self, "assistant step")
            loss, means = self._accumulated(backend.assistant, assistant_terms, self._assistant_inputs)
            logs = {f"assistant/{k}": v for k, v in means.items()}
            phase(self, "assistant update")
            logs["assistant/grad_norm"], _ = self.guard.update(
                "assistant", backend.assistant, self.assistant_optimizer,
                max_grad_norm=config.optim.assistant.max_grad_norm, loss=loss,
            )
            assistant_logs.append(logs)
        self.assistant_scheduler.step()

        # 2. Generator: x0 = g_θ(z, c), L = −α r + w(t)·divergence [+ α_cfg L_cfg]; θ ← θ − η_θ ∇_θ L.
        phase(self, "generator step")
        with self._assistant_unsynced():
            # ∇θ only: no weight gradients for ψ or the reference
            loss, means = self._accumulated(backend.generator, generator_terms, self._generator_inputs)
        logs = {k: torch.stack([d[k] for d in assistant_logs]).mean() for k in assistant_logs[0]}
        logs.update({f"generator/{k}": v for k, v in means.items()})
        phase(self, "generator update")
        logs["generator/grad_norm"], stepped = self.guard.update(
            "generator", backend.generator, self.generator_optimizer,
            max_grad_norm=config.optim.generator.max_grad_norm, loss=loss,
        )
        self.generator_scheduler.step()
        if self.ema is not None and stepped:
            self.ema.step(self.generator_params)
        self.step += 1
        self.guard.end_step(self.step, logs)
        self.callbacks.on_step(self, logs)
        return logs

    # ------------------------------------------------------------------ the run

    def train(self, resume: str | None = None, *, overwrite: bool = False) -> list[dict[str, float]]:
        """Run (or, with ``resume`` = ``"latest"`` or a checkpoint path, continue) to ``loop.max_steps``.

        The main process (with node-local run folders, each node's first, :mod:`distar.train.nodes`) locks the
        run folder for the run (:mod:`distar.train.runfolder`): a folder another run is writing is refused. A
        folder that already holds a run is refused unless ``resume`` is given or ``overwrite`` (which removes
        only the files the old run wrote, see :func:`~distar.train.runfolder.clear_run`). A stop signal saves
        the step reached and raises :class:`~distar.errors.Preempted` (:mod:`distar.train.preemption`). Returns
        the records of the steps run by this call (also appended to ``log.jsonl``, including every step up to
        each checkpoint). Raises :class:`~distar.errors.RunError` when ``loop.max_bad_steps`` steps in a row are
        non-finite, when the run ends on a step with a skipped (non-finite) update, or when a checkpoint cannot
        be written."""
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
                    self.log.file.truncate_after(self.step)
                    if self.monitor is not None:
                        self.monitor.resume(self.step)
                start_trackers(acc, config)
                try:
                    records = self._run()
                finally:
                    if self.monitor is not None and acc.is_main_process:
                        self.monitor.draw()
                    acc.end_training()
                self.guard.check_end(self.step, self._last_checkpoint)
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
        if self._sampling and self.step == 0:
            self.sample()
        if self.monitor is not None and self.step == 0:
            self.monitor_step()
        records: list[dict[str, float]] = []
        show = acc.is_main_process and config.logging.progress_bar
        with tqdm(total=config.loop.max_steps, initial=self.step, desc="train", disable=not show, dynamic_ncols=True) as bar:
            while self.step < config.loop.max_steps:
                lrs = (self.generator_scheduler.get_last_lr()[0], self.assistant_scheduler.get_last_lr()[0])
                start = time.perf_counter()
                terms = self.train_step()
                self.log.add(terms, lrs=lrs, skipped=len(self.guard.skipped), seconds=time.perf_counter() - start)
                self.callbacks.on_point(self, "step", self.step)
                preempted = self.stop_signals.agreed(acc)  # a stop signal: save this step, then stop
                bar.update(1)
                last = self.step == config.loop.max_steps
                saving = config.checkpointing
                save = (saving.every and self.step % saving.every == 0) or (last and saving.save_final) or preempted
                # A checkpoint's step must be in log.jsonl before the checkpoint exists: flush first.
                if self.step % config.logging.every == 0 or last or save or self.guard.should_stop:
                    flushed = self.log.flush(self.step)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in flushed[-1].items() if k.endswith("/loss")})
                    records += flushed
                self.guard.check(self.step, self._last_checkpoint)
                if self._sampling and self.step % config.sampling.every == 0:
                    self.sample()
                if self.monitor is not None and self.step % self.monitor_every == 0:
                    self.monitor_step()  # before the checkpoint: a checkpoint's step has its monitor record
                if save:
                    saved = self.save_checkpoint()
                    if preempted and not last:
                        raise self.stop_signals.stopped(self.step, saved)
        return records

    # ------------------------------------------------------------------ what a run makes besides steps

    def sample(self) -> None:
        """Write the sample grids of this step (:func:`~distar.train.samples.write_sample_grids`); turn
        sampling off for a backend whose ``decode`` does not give images."""
        self._sampling = samples.write_sample_grids(self)

    def monitor_step(self) -> None:
        """One held-out monitor pass (:func:`~distar.train.samples.monitor_pass`); turn the monitor off
        for a backend whose ``decode`` does not give images."""
        if not samples.monitor_pass(self):
            self.monitor = None

    def save_checkpoint(self, folder: str | None = None) -> Path:
        """Write ``checkpoint-<step>/`` (or ``folder``) and prune old ones (:func:`~distar.train.state.save_checkpoint`)."""
        return state.save_checkpoint(self, folder)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the run's state from checkpoint ``path`` (:func:`~distar.train.state.load_checkpoint`)."""
        state.load_checkpoint(self, path)

    def _last_checkpoint(self) -> str:
        return state.last_checkpoint(self.output_dir)
