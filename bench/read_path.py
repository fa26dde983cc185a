"""How many distar source files one training step runs through, and how deep d′ sits.

    python bench/read_path.py [--config configs/tiny_sd.yaml] [key=value ...]

Builds the trainer of the config (tiny SD by default: LoRA generator, shared-LoRA assistant, CLIP
reward), takes one warm-up step, then profiles one ``Trainer.train_step()`` and prints:

- each distar module whose Python code ran during the step (what a reader following one Algorithm 1
  iteration has to open), with the number of its functions that ran;
- the same for each update alone, marked by the public ``Callback.on_phase``: the generator update
  (from "generator step" to the end of its optimiser step) and the assistant update (each
  "assistant step" to the end of its optimiser step);
- the call depth, counted in distar frames below ``train_step``, at which the divergence's d′ runs,
  and those frames;
- the files a reader opens from ``distar train`` to the optimiser step, read statically: the calls
  :data:`READER_PATH` follows (those the issue counted), each resolved to the file that defines it.

The path from ``distar train`` to the Trainer (cli, commands/train, train/build) runs once and is
listed apart: it is the same for every step.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import distar
from distar.config import load_config
from distar.train import Callback, TrainConfig, build_trainer

SOURCE = Path(distar.__file__).parent

#: The calls a reader follows from ``distar train`` to the generator's optimiser step, in call order,
#: by their public names (``module:attribute``).
READER_PATH = (
    "distar.cli:main",  # `distar train`
    "distar.commands.train:run",  # its subcommand
    "distar.config:load_config",  # the YAML config ...
    "distar.train:TrainConfig",  # ... of a run
    "distar.train:build_trainer",  # backend, reward, prompts
    "distar.train:Trainer.train_step",  # one iteration of Algorithm 1
    "distar.train.data:PromptStream.next_batch",  # its prompts
    "distar.train.algorithm:generator_losses",  # the generator update
    "distar.objectives:ObjectiveConfig",  # the method's keys
    "distar.objectives:DIStarLoss",  # the loss (3.4)
    "distar.objectives:PseudoHuber.d_prime",  # d′ (3.8)
    "distar.backends.sd:StableDiffusionBackend",  # the three networks
    "distar.diffusion:DiscreteSchedule",  # α_t, σ_t (2.1)
    "distar.diffusion:score_from_x0",  # scores from x0-predictions (§1)
    "distar.diffusion:cfg_combine",  # guidance (3.5)
    "distar.rewards.base:Reward",  # the reward r(x0, c)
)


def module_of(filename: str) -> str | None:
    path = Path(filename)
    if SOURCE not in path.parents:
        return None
    return str(path.relative_to(SOURCE))


def defining_file(name: str) -> str:
    """The distar file that defines ``module:attribute`` (attributes may be dotted)."""
    module, _, attribute = name.partition(":")
    target: Any = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return module_of(inspect.getsourcefile(inspect.unwrap(target)) or "") or "?"


class Updates(Callback):
    """Names the update running now: from "<network> step" until its optimiser has stepped."""

    def __init__(self) -> None:
        self.current: str | None = None

    def on_phase(self, trainer: Any, phase: str) -> None:
        if phase.endswith(" step"):
            self.current = phase.replace(" step", " update")

    def on_step(self, trainer: Any, record: dict) -> None:
        self.current = None

    def close_after_step(self, optimizer: Any) -> None:
        """End the current update when ``optimizer.step()`` returns."""
        step = optimizer.step

        def stepped(*args: Any, **kwargs: Any) -> Any:
            try:
                return step(*args, **kwargs)
            finally:
                self.current = None

        optimizer.step = stepped


def print_modules(title: str, functions: dict[str, set[str]]) -> None:
    counts = Counter({module: len(names) for module, names in functions.items()})
    print(f"{title}: {len(counts)}")
    for module, n in sorted(counts.items()):
        print(f"  {module:40s} {n:3d} functions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny_sd.yaml")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    updates = Updates()
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"output_dir={out}", "sampling.every=0", "monitor.every=0", "logging.report_to=none",
                     "logging.progress_bar=false", "loop.max_steps=4", *args.overrides]
        config = load_config(TrainConfig, args.config, overrides)
        trainer = build_trainer(config, callbacks=[updates])
        trainer.train_step()  # warm-up: prompt encodings cached, optimiser states made
        updates.close_after_step(trainer.generator_optimizer)
        updates.close_after_step(trainer.assistant_optimizer)

        functions: dict[str, set[str]] = {}
        per_update: dict[str, dict[str, set[str]]] = {"generator update": {}, "assistant update": {}}
        path_to_d_prime: list[list[str]] = []
        stack: list[str | None] = []  # per Python frame: its distar function, or None

        def profile(frame, event, arg):  # noqa: ANN001, ANN202
            if event == "call":
                module = module_of(frame.f_code.co_filename)
                name = frame.f_code.co_qualname
                stack.append(name if module is not None else None)
                if module is not None:
                    functions.setdefault(module, set()).add(name)
                    if updates.current is not None:
                        per_update[updates.current].setdefault(module, set()).add(name)
                    if frame.f_code.co_name == "d_prime":
                        path_to_d_prime.append([f for f in stack if f is not None])
            elif event == "return" and stack:
                stack.pop()

        sys.setprofile(profile)
        try:
            trainer.train_step()
        finally:
            sys.setprofile(None)

    print_modules("distar modules whose code runs in one train_step", functions)
    for update, modules in per_update.items():
        print_modules(f"... in the {update}", modules)
    if path_to_d_prime:
        path = min(path_to_d_prime, key=len)
        below = path[path.index("Trainer.train_step"):]
        print(f"d′ runs {len(below) - 1} distar frames below train_step: {' → '.join(below)}")
    print("once per run, before the first step: cli.py, commands/train.py, train/build.py")
    files = list(dict.fromkeys(defining_file(name) for name in READER_PATH))
    print(f"files a reader opens from `distar train` to the optimiser step: {len(files)}")
    print("  " + ", ".join(files))


if __name__ == "__main__":
    main()
