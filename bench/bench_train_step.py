"""Cost of one Algorithm 1 iteration per method and per assistant layout, measured in one run.

    python bench/bench_train_step.py [--config configs/tiny_sd.yaml] [--steps 20]

Prints seconds per training step for each preset (same model, batch and assistant steps) and the
ratio to Diff-Instruct++ (IKL, whose generator loss needs no backward through the score networks),
then the parameter bytes held by each assistant layout. Figures are for the model in the config
(tiny by default, CPU): they show relative costs, not GPU timings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from distar.config import load_config
from distar.train import TrainConfig, build_trainer

PRESETS = ("di_pp", "diff_instruct", "sim", "di_star", "di_star_out")


def seconds_per_step(config_path: str, preset: str, steps: int, overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        config = load_config(
            TrainConfig,
            config_path,
            [f"objective.preset={preset}", f"output_dir={out}", "sampling.every=0", "checkpointing.every=0",
             "checkpointing.save_final=false", "logging.report_to=none", "logging.progress_bar=false",
             f"loop.max_steps={steps + 2}", *overrides],
        )
        trainer = build_trainer(config)
        for _ in range(2):  # warm-up
            trainer.train_step()
        times = []
        for _ in range(steps):
            tick = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - tick)
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        return statistics.median(times)


def assistant_bytes(config_path: str, overrides: list[str]) -> dict[str, int]:
    from distar.backends import build_backend

    config = load_config(TrainConfig, config_path, overrides)
    backend = build_backend(config.model)
    modules = [backend.generator, backend.assistant] + ([backend.reference] if backend.reference is not None else [])
    unique = {id(p): p for m in modules for p in m.parameters()}
    trainable = sum(p.numel() * p.element_size() for p in backend.assistant_parameters() if p.requires_grad)
    return {"trainable": trainable, "unet_weights": sum(p.numel() * p.element_size() for p in unique.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny_sd.yaml")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"{'preset':<14} {'s/step':>8} {'vs di_pp':>9}")
    costs = {p: seconds_per_step(args.config, p, args.steps, []) for p in PRESETS}
    for preset, cost in costs.items():
        print(f"{preset:<14} {cost:8.4f} {cost / costs['di_pp']:8.2f}x")

    print(f"\n{'assistant layout':<26} {'trainable MB':>12} {'UNet weights MB':>16}")
    layouts = {
        "full copy": ["model.assistant_lora_rank=0"],
        "LoRA on a copy (r=4)": ["model.assistant_lora_rank=4", "model.assistant_lora_shared=false"],
        "LoRA on reference (r=4)": ["model.assistant_lora_rank=4", "model.assistant_lora_shared=true"],
    }
    base = None
    for name, overrides in layouts.items():
        sizes = assistant_bytes(args.config, overrides)
        base = base or sizes["unet_weights"]
        print(f"{name:<26} {sizes['trainable'] / 1e6:12.3f} {sizes['unet_weights'] / 1e6:16.3f}"
              f"  ({sizes['unet_weights'] / base:.2f}x)")


if __name__ == "__main__":
    main()
