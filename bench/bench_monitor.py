"""What the training monitor costs, as a fraction of training time, measured interleaved in one process.

    OMP_NUM_THREADS=1 python bench/bench_monitor.py [--reps 5] [--steps-per-rep 4]

The trainer is a shapes-world demo run (DI*, α = 30, the shipped one-step start, batch 8). Its
monitor has the world's judge (the CLIP analogue) and truth metrics, the demo's 64 held-out prompts ×
2 seeds, and also the default 16 × 2. Repetitions alternate ``--steps-per-rep`` training steps
(``Trainer.train_step``) and one monitor pass (``Trainer.monitor_step``) of each size; times are the
process's CPU time. Printed: medians [min–max] per training step and per pass, the pass's cost as a
fraction of the training time at an interval of E steps (pass / (E × step)) for the default interval
(loop.max_steps / 10) and the demo's, and the one-time cost of the reference's drift images.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distar.objectives.presets import preset
from distar.runtime import environment
from distar.train import MonitorConfig
from distar.worlds.shapes.assets import ASSETS_DIR, asset, build_record
from distar.worlds.shapes.grammar import sample_prompts
from distar.worlds.shapes.guardrails import monitor_config
from distar.worlds.shapes.one_step import OneStepLoop, train_config


def seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s [{min(values):.3f}–{max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps-per-rep", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from distar.train.build import build_trainer

    loop = OneStepLoop(steps=120, train_prompts=2000, seed=5)
    t_init = build_record()["config"]["one_step"]["t_init"]
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, base in (("demo 64×2", MonitorConfig(every=30, prompts=64, seeds=[0, 1])), ("default 16×2", MonitorConfig())):
            out = Path(tmp) / name.split()[0]
            config = train_config(
                asset("reference"), preset("di_star", reward_scale=30.0, guidance_scale=3.0), loop,
                sample_prompts(loop.train_prompts, loop.seed), out, t_init,
                reward=asset("reward"), generator_init=asset("one_step"), progress_bar=False,
            )
            monitor = monitor_config(base, ASSETS_DIR, out / "reference.safetensors")
            trainer = build_trainer(dataclasses.replace(config, monitor=monitor))
            trainer.output_dir.mkdir(parents=True)
            first = seconds(trainer.monitor_step)  # step 0: also makes the reference's drift images once
            trainers[name] = (trainer, first)
        step_times: list[float] = []
        pass_times: dict[str, list[float]] = {name: [] for name in trainers}
        train_trainer = trainers["demo 64×2"][0]
        for _ in range(args.reps):
            step_times.append(seconds(lambda: [train_trainer.train_step() for _ in range(args.steps_per_rep)]) / args.steps_per_rep)
            for name, (trainer, _) in trainers.items():
                pass_times[name].append(seconds(trainer.monitor_step))
    step = statistics.median(step_times)
    print(f"environment: {environment()}")
    print(f"training step (batch {loop.batch_size}): {summary(step_times)}")
    default_every, demo_every = max(1, loop.steps // 10), 30
    for name, times in pass_times.items():
        one = statistics.median(times)
        print(f"monitor pass, {name}: {summary(times)}; first pass with the drift images: {trainers[name][1]:.1f} s")
        for label, every in (("default interval", default_every), ("demo interval", demo_every)):
            print(f"  {label} ({every} steps): pass / training = {one / (every * step):.3f}")
        run = loop.steps * step
        passes = loop.steps // demo_every + 1
        print(f"  a {loop.steps}-step run at the demo interval: ({passes} passes + drift images) / training = "
              f"{((passes - 1) * one + trainers[name][1]) / run:.3f}")


if __name__ == "__main__":
    main()
