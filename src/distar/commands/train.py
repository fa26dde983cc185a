"""``distar train``: run Algorithm 1 from a YAML config with ``key=value`` overrides.

Multi-process runs go through a launcher, e.g. ``accelerate launch -m distar train ...`` (GPUs) or
``torchrun --nproc_per_node 2 -m distar train ...`` (CPU, gloo).
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping

from distar.errors import UserError
from distar.runtime import add_threads_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config YAML (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. optim.generator.lr=1e-6 loop.max_steps=10",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue from the newest checkpoint in output_dir that verifies ('latest'; starts fresh if "
        "there is none) or from a checkpoint folder",
    )
    start.add_argument(
        "--overwrite", action="store_true", help="replace the run already in output_dir: removes only what distar wrote there, and refuses a folder "
        "holding anything else"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    add_threads_argument(parser)


def check_launcher(env: Mapping[str, str]) -> None:
    """Refuse the one process that ``accelerate launch`` starts on CPU for ``num_processes > 1``.

    Without an mpirun hostfile, accelerate's CPU launcher starts a single process; it sets
    ``MASTER_ADDR`` for the processes asked for but not ``WORLD_SIZE``, which every multi-process
    launcher sets."""
    if "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and "WORLD_SIZE" not in env:
        raise UserError(
            "accelerate launch starts only one process on CPU (several need mpirun): use "
            "torchrun --standalone --nproc_per_node N -m distar train ..., or num_processes: 1"
        )


def run(args: argparse.Namespace) -> int:
    from distar.config import apply_overrides, config_yaml, from_dict, read_config_file, set_key
    from distar.train.config import TrainConfig

    check_launcher(os.environ)
    data = apply_overrides(read_config_file(args.config), args.overrides)
    if args.threads is not None:  # the flag wins over the file and the overrides
        set_key(data, "loop.threads", args.threads)
    config = from_dict(TrainConfig, data)
    if args.dry_run:
        print(config_yaml(config), end="")
        return 0
    from distar.io import writable_dir
    from distar.train import checkpoint as ckpt
    from distar.train.build import load_prompts
    from distar.train.nodes import agree
    from distar.train.setup import check_precision, make_accelerator
    from distar.train.runfolder import RunLock, check_overwrite, check_run_folder

    # A launch of several processes starts its process group first, so that an input refused on one node's
    # own disk stops every node (agree) instead of leaving the others waiting for it at start-up.
    accelerator = make_accelerator(config) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None

    def check_inputs() -> tuple[list[str], str | None]:
        """Every input is checked before a model is built: the prompts and the checkpoint to resume."""
        check_run_folder(config.output_dir)
        check_precision(config)
        writable_dir(config.output_dir, "output_dir")
        if os.environ.get("RANK", "0") == "0":  # rank 0 of this run will lock the folder: is another run there?
            RunLock(config.output_dir).check_free()
        prompts = load_prompts(config.data)
        resume = args.resume
        if resume is None:
            ckpt.check_new_run(config.output_dir, overwrite=args.overwrite)
            if args.overwrite:
                check_overwrite(config.output_dir)
        elif (found := ckpt.resolve_checkpoint(resume, config.output_dir)) is not None:
            resume = str(found)  # the trainer verifies it again (from a cache), without repeating what was skipped
        return prompts, resume

    prompts, resume = agree(accelerator, check_inputs)
    from distar.commands.plan import check_training_memory
    from distar.runtime import configure_threads, count_parameters, report_threads
    from distar.train.build import build_trainer
    from distar.train.callbacks import FaultHook

    check_training_memory(config)  # on a GPU: the estimate before the first step

    fault = FaultHook.from_env()  # tests: $DISTAR_KILL_AT stops the run at a chosen point
    trainer = build_trainer(config, accelerator, prompts=prompts, callbacks=[fault] if fault else [])
    backend = trainer.backend
    modules = (backend.generator, backend.assistant, backend.reference, trainer.reward)
    threads = configure_threads(
        config.loop.threads, parameters=count_parameters(*modules), device=trainer.accelerator.device
    )
    if trainer.accelerator.is_main_process:
        report_threads(threads, "train")
    records = trainer.train(resume=resume, overwrite=args.overwrite)
    if trainer.accelerator.is_main_process and records:
        last = records[-1]
        losses = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.endswith("/loss"))
        print(f"step {last['step']}: {losses}; run folder {config.output_dir}")
    return 0
