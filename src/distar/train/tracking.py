"""What a training run reports: per-step records in ``log.jsonl`` and the accelerate trackers
(TensorBoard, W&B): window means of every term, learning rates, throughput, the config, sample grids."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor

from distar.config import to_dict
from distar.train.config import TrainConfig
from distar.train.logs import JsonlLog, peak_memory_mib

#: Per-step record keys that are measurements of the machine, not of the optimisation.
TIMING_KEYS = ("time/step_s", "time/samples_per_s", "time/images_per_s", "mem/peak_mib")


def flat_config(data: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as dotted keys with scalar values (lists and nulls as text), for tracker hparams."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def start_trackers(accelerator: Accelerator, config: TrainConfig) -> None:
    """Start the trackers of ``logging.report_to`` with the resolved config (W&B's run config,
    TensorBoard's hyper-parameters)."""
    accelerator.init_trackers(config.logging.project, init_kwargs={"wandb": {"config": to_dict(config)}})
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.store_init_configuration(flat_config(to_dict(config)))


def log_image(accelerator: Accelerator, name: str, image: Tensor, step: int) -> None:
    """Send one (3, H, W) image in [0, 1] to the trackers that take images."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: image[None]}, step=step)
        elif tracker.name == "wandb":
            tracker.log_images({name: [image.permute(1, 2, 0).cpu().numpy()]}, step=step)


class StepLog:
    """The records of the steps since the last flush, and their writing.

    :meth:`add` keeps a step's terms (0-dim tensors: no device synchronisation); :meth:`flush` averages
    the window's terms over processes, appends one record per step to ``log.jsonl`` (the last with
    :data:`TIMING_KEYS`) and logs the window means, learning rates and timings to the trackers.
    """

    def __init__(self, accelerator: Accelerator, config: TrainConfig, path: str | Path) -> None:
        self.accelerator, self.config = accelerator, config
        self.file = JsonlLog(path)
        self.window: list[tuple[dict[str, Tensor], float, float, int]] = []
        self.busy = 0.0  # seconds spent in training steps this window (sampling and checkpoints excluded)

    def add(self, terms: dict[str, Tensor], *, lrs: tuple[float, float], skipped: int, seconds: float) -> None:
        """One step's terms, the (generator, assistant) learning rates it used, its skipped updates and time."""
        self.window.append((terms, *lrs, skipped))
        self.busy += seconds

    def flush(self, step: int) -> list[dict]:
        """Write the window ending at ``step`` (a step with skipped updates has ``skipped_updates`` in its
        record); returns its records."""
        acc, config, window = self.accelerator, self.config, self.window
        step_seconds = self.busy / len(window)
        keys = list(window[0][0])
        values = acc.reduce(torch.stack([torch.stack([entry[0][k] for k in keys]) for entry in window]), "mean")
        first = step - len(window) + 1
        records = [
            {"step": first + i, **dict(zip(keys, row)), "lr/generator": lr_g, "lr/assistant": lr_a}
            | ({"skipped_updates": skipped} if skipped else {})
            for i, (row, (_, lr_g, lr_a, skipped)) in enumerate(zip(values.tolist(), window))
        ]
        samples = config.data.batch_size * config.loop.gradient_accumulation_steps * acc.num_processes  # per update
        records[-1].update({
            "time/step_s": step_seconds,
            "time/samples_per_s": samples / step_seconds,  # prompts of the generator updates
            "time/images_per_s": samples * (1 + config.loop.assistant_steps) / step_seconds,  # generator samples made
            "mem/peak_mib": peak_memory_mib(acc.device),
        })
        if acc.is_main_process:
            self.file.write(records)
            means = {k: sum(r[k] for r in records) / len(records) for k in keys}
            lrs = {k: records[-1][k] for k in ("lr/generator", "lr/assistant")}
            acc.log({**means, **lrs, **{k: records[-1][k] for k in TIMING_KEYS}}, step=step)
        self.window, self.busy = [], 0.0
        return records
