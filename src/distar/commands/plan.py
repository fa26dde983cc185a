"""``distar plan``: will a training config fit a GPU, and what are the cheapest changes that make it fit?

The figures come from the fake-tensor estimator (:mod:`distar.train.memory`, docs/backends.md): one
Algorithm 1 iteration of the config on the published architecture with random weights, no GPU and no
download. Published hub ids (:data:`distar.testing.architectures.HUB_ARCHITECTURES`) and PickScore are
written as weightless folders; local folders and ``tiny:`` models are used as they are.

When the estimate does not fit, the options of :data:`OPTIONS` that the config does not use yet are
added one at a time, cheapest first, each checked by a new estimate, until it fits. Options that keep
the training as it is come first; those that change the recipe (``recipe: true``) are tried only with
``--change-recipe``. If all of them are not enough, the answer is sharding: per-process memory under
FSDP over N processes is reckoned from the estimate as ``peak − (1 − 1/N)·S``, where S is the
trainable state that full sharding splits (trainable weights, their gradients, optimiser states, EMA).

``distar train`` on a GPU makes the same estimate before its first step (:func:`check_training_memory`,
``loop.plan_memory``) and warns when it will not fit.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distar.errors import UserError, first_line

if TYPE_CHECKING:
    from distar.train.config import TrainConfig
    from distar.train.memory import MemoryEstimate

logger = logging.getLogger(__name__)

#: What launchers set for a process of a distributed run; the estimate's own process must not see them.
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Option:
    """A layout change: its overrides, when the config already has it, and what it costs."""

    name: str
    overrides: tuple[str, ...]
    cost: str
    recipe: bool = False

    def applies(self, config: TrainConfig) -> bool:
        """Whether the config does not have this option yet."""
        import yaml

        from distar.config import to_dict

        data = to_dict(config)
        for override in self.overrides:
            key, _, value = override.partition("=")
            node: Any = data
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node != yaml.safe_load(value):
                return True
        return False


#: The layout options, cheapest first (docs/backends.md, "Planning memory", says what each costs).
OPTIONS: tuple[Option, ...] = (
    Option("text encoders off the GPU", ("model.offload_text_encoders=true",),
           "a host-to-device copy of the encoders when new prompts are encoded; none with the prompt cache"),
    Option("bfloat16 frozen weights", ("model.dtype=bfloat16",),
           "none in speed; the reference, VAE, encoders and reward run in bf16"),
    Option("8-bit AdamW", ("optim.use_8bit_adam=true",), "none measurable; blockwise 8-bit optimiser states"),
    Option("gradient checkpointing", ("model.gradient_checkpointing=true",),
           "one more forward of each checkpointed pass in backward: about +30 % FLOPs"),
    Option("no EMA", ("ema.decay=0",), "the paper's recipe keeps an EMA of the generator", recipe=True),
    Option("shared LoRA-64 assistant", ("model.assistant_lora_rank=64", "model.assistant_lora_shared=true"),
           "the assistant is a rank-64 adapter on the reference, not a full copy", recipe=True),
    Option("LoRA-64 generator", ("model.generator_lora_rank=64",),
           "only a rank-64 adapter of the generator trains", recipe=True),
)

#: Process counts tried for FSDP.
FSDP_PROCESSES = (2, 4, 8, 16, 32, 64)

#: What ``loop.fsdp`` needs of a layout (the trainer refuses the rest, :mod:`distar.train.distributed`): in
#: the shared-LoRA layout the reference is sharded with the assistant, so the monitor's drift images,
#: which the main process makes alone, are off. None of these changes the memory of an iteration.
FSDP_NEEDS = (
    Option("no reference drift in the monitor under FSDP", ("monitor.drift_steps=0",),
           "the shared-LoRA reference is sharded, and one process makes the drift images"),
)

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(gib|gb|mib|mb|g|m)?\s*$", re.IGNORECASE)
_UNITS = {"gib": 2**30, "g": 2**30, "gb": 10**9, "mib": 2**20, "m": 2**20, "mb": 10**6, None: 2**30}


def parse_size(text: str) -> int:
    """Bytes of ``24GiB``, ``24GB`` (10⁹), ``24`` (GiB), ``512MiB``."""
    match = _SIZE.match(text)
    if not match:
        raise UserError(f"--gpu-memory: cannot read '{text}' (e.g. 24GiB, 80GB)")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _UNITS[unit])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for distar train")
    parser.add_argument("--gpu-memory", default="80GiB", help="memory of one GPU (default 80GiB; GB = 10^9 bytes)")
    parser.add_argument(
        "--margin", type=float, default=0.1,
        help="fraction of the GPU kept for what the estimate leaves out: CUDA context, workspaces, fragmentation",
    )
    parser.add_argument("--change-recipe", action="store_true", help="also try options that change the training")


def gib(value: float) -> str:
    """Bytes in GiB (MiB below 1 GiB), one decimal."""
    return f"{value / 2**30:.1f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def estimation_inputs(config: TrainConfig, folder: Path) -> TrainConfig:
    """``config`` with published hub ids replaced by weightless architecture folders written into ``folder``."""
    from distar.config import from_dict, to_dict
    from distar.rewards.spec import TINY
    from distar.testing.architectures import HUB_ARCHITECTURES, write_architecture, write_pickscore_architecture
    from distar.train.config import TrainConfig

    data = to_dict(config)
    model = data["model"]
    pretrained = model["pretrained"]
    if pretrained in HUB_ARCHITECTURES:
        model.update(pretrained=str(write_architecture(folder / "model", HUB_ARCHITECTURES[pretrained])), variant=None)
    elif not (pretrained.startswith("tiny:") or Path(pretrained).is_dir()):
        known = ", ".join(HUB_ARCHITECTURES)
        raise UserError(f"model.pretrained: no architecture of '{pretrained}' offline (known: {known}; or a local folder)")
    for spec in data["rewards"]:
        if spec["path"] in (None, TINY) or Path(str(spec["path"])).exists():
            if spec["path"] is None and spec["name"] == "pickscore":
                spec["path"] = str(write_pickscore_architecture(folder / "pickscore"))
            elif spec["path"] is None:
                raise UserError(f"rewards: no architecture of '{spec['name']}' offline (give its path, or rewards=[])")
        else:
            raise UserError(f"rewards: no architecture of '{spec['path']}' offline (give a local path, or rewards=[])")
    return from_dict(TrainConfig, data)


#: One assistant update of one micro-batch: each update and micro-batch frees what it allocates, so
#: the peak is that of the config's own counts, in a fraction of the time.
ESTIMATE_OVERRIDES = ["loop.assistant_steps=1", "loop.gradient_accumulation_steps=1"]


def estimate(config: TrainConfig, overrides: list[str], folder: Path) -> MemoryEstimate:
    """The fake-tensor estimate of ``config`` with ``overrides`` (and :data:`ESTIMATE_OVERRIDES`)."""
    from distar.config import apply_overrides, from_dict, to_dict
    from distar.train.config import TrainConfig
    from distar.train.memory import estimate_iteration_memory

    changed = from_dict(TrainConfig, apply_overrides(to_dict(config), [*overrides, *ESTIMATE_OVERRIDES]))
    return estimate_iteration_memory(estimation_inputs(changed, folder))


def _fsdp_ready(config: TrainConfig, option: Option) -> bool:
    """Whether the config already meets ``option`` of :data:`FSDP_NEEDS` another way (no shared-LoRA
    assistant, or no monitor)."""
    assert config.model is not None
    shared = config.model.assistant_lora_rank > 0 and config.model.assistant_lora_shared
    return not shared or not config.monitor.interval(config.loop.max_steps)


def fsdp_needs(config: TrainConfig) -> list[Option]:
    """The options of :data:`FSDP_NEEDS` that ``config`` must add before it can run under FSDP."""
    return [o for o in FSDP_NEEDS if o.applies(config) and not _fsdp_ready(config, o)]


def sharded_state(found: MemoryEstimate) -> int:
    """Bytes that FSDP's full sharding splits: trainable weights, optimiser states, EMA and the
    generator's gradients (the peak falls in the generator's update)."""
    return sum(found.trainable.values()) + found.trainable.get("generator weights", 0)


def fsdp_processes(found: MemoryEstimate, limit: int) -> tuple[int, int] | None:
    """The fewest processes of :data:`FSDP_PROCESSES` whose per-process estimate is under ``limit``."""
    state = sharded_state(found)
    for n in FSDP_PROCESSES:
        per_rank = int(found.peak - (1 - 1 / n) * state)
        if per_rank <= limit:
            return n, per_rank
    return None


def memory_check(config: TrainConfig, total_memory: int, *, margin: float = 0.1) -> tuple[bool, str]:
    """Whether one training iteration of ``config`` is estimated to fit a GPU of ``total_memory`` bytes
    less ``margin``, and a one-line report of the estimate."""
    with tempfile.TemporaryDirectory() as tmp:
        found = estimate(config, [], Path(tmp))
    limit = int(total_memory * (1 - margin))
    figures = f"≈ {gib(found.peak)} at the peak ({found.peak_phase}), resident {gib(found.resident)}"
    if found.peak <= limit:
        return True, f"memory estimate {figures}: fits the GPU's {gib(total_memory)}"
    return False, (
        f"memory estimate {figures}: more than the GPU's {gib(total_memory)} less {margin:.0%}; the run will "
        "likely stop out of memory (distar plan --config ... shows what fits; loop.plan_memory=false skips this)"
    )


def _memory_check_alone(config: TrainConfig, total_memory: int) -> tuple[bool, str]:
    """:func:`memory_check` in a process of its own: not one of the launcher's distributed run, and with
    the precision the launcher chose written into the config (CPU autocast: bf16 for fp16, same widths)."""
    from distar.config import apply_overrides, from_dict, to_dict
    from distar.train.config import TrainConfig

    precision = config.loop.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    for name in [*LAUNCHER_ENV, *(k for k in os.environ if k.startswith("ACCELERATE_"))]:
        os.environ.pop(name, None)
    cpu_precision = "bf16" if precision in ("fp16", "bf16") else "no"
    config = from_dict(TrainConfig, apply_overrides(to_dict(config), [f"loop.mixed_precision={cpu_precision}"]))
    return memory_check(config, total_memory)


def training_gpu_memory(config: TrainConfig) -> int | None:
    """The memory of the GPU that ``distar train`` checks its config against: GPU 0's, on rank 0 of a
    CUDA run with ``loop.plan_memory`` (FSDP aside: the estimate is of one whole process); None otherwise,
    without touching CUDA on a CPU run."""
    import torch

    from distar.train.setup import uses_cpu

    if not config.loop.plan_memory or config.model is None or os.environ.get("RANK", "0") != "0":
        return None
    if uses_cpu(config) or config.loop.fsdp:
        return None
    return torch.cuda.get_device_properties(0).total_memory


def check_training_memory(config: TrainConfig) -> None:
    """Log the estimate of one iteration before ``distar train`` builds its models, as a warning when it
    will not fit the GPU (:func:`training_gpu_memory`); does nothing otherwise. The estimate runs in a
    spawned CPU process; a config it cannot estimate (no architecture offline, say) is logged and skipped."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    total = training_gpu_memory(config)
    if total is None:
        return
    start = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            fits, line = pool.submit(_memory_check_alone, config, total).result()
        except Exception as err:  # advisory: a config the estimator cannot take still trains
            logger.info("memory estimate skipped: %s", first_line(err))
            return
    (logger.info if fits else logger.warning)("%s (%.0f s)", line, time.perf_counter() - start)


def report(found: MemoryEstimate) -> None:
    print(f"  peak      ≈ {gib(found.peak)}, during the {found.peak_phase}")
    print(f"  resident  ≈ {gib(found.resident)} when the iteration starts (warm-up peak {gib(found.warm_up_peak)})")
    for phase, peak in found.phase_peaks.items():
        print(f"    {phase:<34} peak ≈ {gib(peak)}")
    state = ", ".join(f"{k} {gib(v)}" for k, v in found.trainable.items() if v)
    print(f"  trainable state: {state}")


def run(args: argparse.Namespace) -> int:
    from distar.config import load_config
    from distar.train.config import TrainConfig

    config = load_config(TrainConfig, args.config, args.overrides)
    if config.model is None:
        raise UserError("model: the training config needs a `model` section")
    if not 0 <= args.margin < 1:
        raise UserError("--margin: a fraction in [0, 1)")
    memory = parse_size(args.gpu_memory)
    limit = int(memory * (1 - args.margin))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{args.config}: one Algorithm 1 iteration, batch {config.data.batch_size} per process, "
              "estimated on fake tensors (no GPU, random weights)")
        found = estimate(config, [], folder)
        report(found)
        print(f"GPU {gib(memory)}, {args.margin:.0%} kept back: limit {gib(limit)}")
        if found.peak <= limit:
            print(f"fits: ≈ {gib(found.peak)} of {gib(memory)} ({time.perf_counter() - start:.0f} s)")
            return 0
        print(f"does not fit: ≈ {gib(found.peak)} > {gib(limit)}. Cheapest changes, each added and estimated:")
        chosen: list[str] = []
        for option in OPTIONS:
            if option.recipe and not args.change_recipe or not option.applies(config):
                continue
            chosen += option.overrides
            found = estimate(config, chosen, folder)
            tag = " (changes the recipe)" if option.recipe else ""
            print(f"  + {option.name}{tag}: ≈ {gib(found.peak)}  [{' '.join(option.overrides)}; cost: {option.cost}]")
            if found.peak <= limit:
                print(f"fits with: {' '.join(chosen)} ({time.perf_counter() - start:.0f} s)")
                return 0
        needs = fsdp_needs(config)  # none of them changes the iteration's memory: no new estimate
        for option in needs:
            chosen += option.overrides
            print(f"  + {option.name} (FSDP needs it; the same memory)  [{' '.join(option.overrides)}; {option.cost}]")
        sharded = fsdp_processes(found, limit)
        if sharded is None:
            print(f"does not fit even with FSDP over {FSDP_PROCESSES[-1]} processes")
            return 1
        n, per_rank = sharded
        extra = f"{' '.join(chosen)} " if chosen else ""
        print(f"shard with FSDP over {n} processes: ≈ {gib(per_rank)} per process "
              f"(peak − (1 − 1/{n}) × {gib(sharded_state(found))} of trainable state; from the estimate's counts)")
        print(f"  torchrun --nproc_per_node {n} -m distar train --config {args.config} loop.fsdp=true "
              f"{extra}{' '.join(args.overrides)}".rstrip())
        if n > 8:  # more than one node's GPUs
            print("  (over several nodes: docs/training.md, \"The paper's recipe (GPUs)\", several nodes)")
        if not args.change_recipe:
            print("  (--change-recipe also tries a LoRA generator, a shared LoRA assistant and no EMA)")
        print(f"({time.perf_counter() - start:.0f} s)")
    return 0
