"""How many distar source files one training step runs through, and how deep d′ sits.

    python bench/read_path.py [--config configs/tiny_sd.yaml] [key=value ...]

Builds the trainer of the config (tiny SD by default: LoRA generator, shared-LoRA assistant, CLIP
reward), takes one warm-up step, then profiles one ``Trainer.train_step()`` and prints:

- each distar module whose Python code ran during the step (what a reader following one Algorithm 1
  iteration has to open), with the number of its functions that ran;
- the call depth, counted in distar frames below ``train_step``, at which the divergence's d′ runs.

The path from ``distar train`` to the Trainer (cli, commands/train, train/build) runs once and is
listed apart: it is the same for every step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

import distar
from distar.config import load_config
from distar.train import TrainConfig, build_trainer

SOURCE = Path(distar.__file__).parent


def module_of(filename: str) -> str | None:
    path = Path(filename)
    if SOURCE not in path.parents:
        return None
    return str(path.relative_to(SOURCE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny_sd.yaml")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"output_dir={out}", "sampling.every=0", "monitor.every=0", "logging.report_to=none",
                     "logging.progress_bar=false", "loop.max_steps=4", *args.overrides]
        config = load_config(TrainConfig, args.config, overrides)
        trainer = build_trainer(config)
        trainer.train_step()  # warm-up: prompt encodings cached, optimiser states made

        functions: dict[str, set[str]] = {}
        depth_of_d_prime: list[int] = []
        stack: list[bool] = []  # per Python frame: is it distar code

        def profile(frame, event, arg):  # noqa: ANN001, ANN202
            if event == "call":
                module = module_of(frame.f_code.co_filename)
                stack.append(module is not None)
                if module is not None:
                    functions.setdefault(module, set()).add(frame.f_code.co_qualname)
                    if frame.f_code.co_name == "d_prime":
                        depth_of_d_prime.append(sum(stack) - 1)
            elif event == "return" and stack:
                stack.pop()

        sys.setprofile(profile)
        try:
            trainer.train_step()
        finally:
            sys.setprofile(None)

    counts = Counter({module: len(names) for module, names in functions.items()})
    print(f"distar modules whose code runs in one train_step: {len(counts)}")
    for module, n in sorted(counts.items()):
        print(f"  {module:40s} {n:3d} functions")
    if depth_of_d_prime:
        print(f"d′ runs {min(depth_of_d_prime)} distar frames below train_step")
    print("once per run, before the first step: cli.py, commands/train.py, train/build.py")


if __name__ == "__main__":
    main()
