"""Peak GPU memory of distar's training layouts at real scale, estimated on fake tensors (no GPU, no weights).

    OMP_NUM_THREADS=1 python bench/memory_estimate.py --family sdxl [--layouts NAME ...] [--batch 1] [--markdown] [--fsdp]
    OMP_NUM_THREADS=1 python bench/memory_estimate.py --validate     # estimate vs measurement, tiny model on CPU

Each layout is a family's shipped config (``configs/sd15_pickscore.yaml``, ``sdxl_dmd2_pickscore.yaml``,
``sd35m_pickscore.yaml``, ``flux_dev_pickscore.yaml``) with the overrides below, on the published
architecture with random weights (:mod:`distar.testing.architectures`; the generator starts as a copy of
the reference, e.g. instead of DMD2's UNet, which has the same architecture) and PickScore's CLIP ViT-H/14
as the reward. :func:`distar.train.memory.estimate_iteration_memory` runs one Algorithm 1 iteration
through distar's Trainer at the config's resolution, batch ``--batch`` per GPU, with one assistant step
(the configs make 5; each frees what it allocates, so the peak is the same) and prints the peak of
allocated GPU memory, the bytes resident when the iteration starts (weights, optimiser states, EMA) and
where the peak falls. Every figure is an estimate (see the module notes of distar.train.memory for what
is and is not modelled); the last column compares it with one 80 GB GPU, keeping 8 GiB for what the
estimate leaves out (CUDA context, cuBLAS/cuDNN workspaces, fragmentation). With ``--fsdp``, a layout
that does not fit gets the per-process figure of ``distar plan``: the layout with what FSDP needs (no EMA,
the assistant's adapter on a copy) estimated again, and ``peak − (1 − 1/N)·S`` for the fewest processes N
under the limit (:func:`distar.commands.plan.fsdp_processes`: arithmetic on the estimate).

``--validate`` runs the estimate for a tiny SDXL-shaped model in the one-GPU layout (shared LoRA
assistant, checkpointing, EMA, tiny PickScore) and measures the same iteration on real CPU tensors: the
peak tracked the same way, and the CPU allocator's own peak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from distar.commands import plan
from distar.config import load_config
from distar.runtime import environment
from distar.testing.architectures import ARCHITECTURES, write_architecture, write_pickscore_architecture
from distar.train import TrainConfig
from distar.train.memory import MemoryEstimate, estimate_iteration_memory, gib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: GiB of an 80 GB GPU, and what is kept back for what the estimate leaves out.
GPU_GIB, MARGIN_GIB = 80.0, 8.0

#: The one-GPU ladder of docs/backends.md: from everything off to the recipe, one option at a time.
LADDER = [
    ("naive: fp32 frozen weights, full assistant, AdamW, no checkpointing", [
        "model.dtype=float32", "model.gradient_checkpointing=false", "model.assistant_lora_rank=0",
        "optim.use_8bit_adam=false", "model.offload_text_encoders=false",
    ]),
    ("+ model.dtype: bfloat16", [
        "model.gradient_checkpointing=false", "model.assistant_lora_rank=0", "optim.use_8bit_adam=false",
        "model.offload_text_encoders=false",
    ]),
    ("+ model.gradient_checkpointing", [
        "model.assistant_lora_rank=0", "optim.use_8bit_adam=false", "model.offload_text_encoders=false",
    ]),
    ("+ assistant_lora_rank: 64, shared", ["optim.use_8bit_adam=false", "model.offload_text_encoders=false"]),
    ("+ optim.use_8bit_adam", ["model.offload_text_encoders=false"]),
    ("+ offload_text_encoders = the recipe", []),
    ("recipe, ema.decay: 0", ["ema.decay=0"]),
]
#: Other layouts, each one change to the recipe.
VARIANTS = [
    ("recipe, LoRA-64 generator", ["model.generator_lora_rank=64"]),
    ("recipe, LoRA-64 assistant on a copy", ["model.assistant_lora_shared=false"]),
    ("recipe, full assistant copy (DMD2's)", ["model.assistant_lora_rank=0"]),
    ("recipe, no gradient checkpointing", ["model.gradient_checkpointing=false"]),
]

#: family -> (shipped config, its layouts).
FAMILIES: dict[str, tuple[str, list[tuple[str, list[str]]]]] = {
    "sd15": ("sd15_pickscore.yaml", [
        ("naive: fp32 frozen weights, no checkpointing", ["model.dtype=float32", "model.gradient_checkpointing=false"]),
        ("recipe: bf16 frozen, checkpointing, full assistant, AdamW", []),
        ("recipe, shared LoRA-64 assistant", ["model.assistant_lora_rank=64"]),
        ("recipe, LoRA-64 generator + shared LoRA-64 assistant",
         ["model.generator_lora_rank=64", "model.assistant_lora_rank=64"]),
    ]),
    "sdxl": ("sdxl_dmd2_pickscore.yaml", LADDER + VARIANTS),
    "sd35m": ("sd35m_pickscore.yaml", [
        ("recipe: shared LoRA-64 assistant, 8-bit Adam, offload", []),
        ("recipe, LoRA-64 generator", ["model.generator_lora_rank=64"]),
        ("recipe, full assistant copy", ["model.assistant_lora_rank=0"]),
        ("recipe, no gradient checkpointing", ["model.gradient_checkpointing=false"]),
        ("recipe, AdamW (no 8-bit), no offload", ["optim.use_8bit_adam=false", "model.offload_text_encoders=false"]),
    ]),
    "flux-dev": ("flux_dev_pickscore.yaml", [
        ("recipe: LoRA-64 generator + shared LoRA-64 assistant", []),
        ("recipe, ema.decay: 0", ["ema.decay=0"]),
        ("recipe, no gradient checkpointing", ["model.gradient_checkpointing=false"]),
        ("full generator, shared LoRA-64 assistant", ["model.generator_lora_rank=0"]),
    ]),
}


def family_config(family: str, folder: Path, reward: Path | None, batch: int, overrides: list[str]) -> TrainConfig:
    """The family's shipped config on the random-weight architecture in ``folder`` (written once by the
    caller), PickScore-sized reward at ``reward`` (None: no reward), batch ``batch``, ``overrides``."""
    config_file, _ = FAMILIES[family]
    rewards = f"rewards=[{{name: pickscore, path: {reward}}}]" if reward else "rewards=[]"
    return load_config(TrainConfig, CONFIGS / config_file, [
        f"model.pretrained={folder}", "model.variant=null", rewards, f"data.batch_size={batch}",
        "loop.assistant_steps=1", *([] if reward else ["objective.reward_scale=0"]), *overrides,
    ])


def verdict(estimate: MemoryEstimate) -> str:
    """Fits one 80 GB GPU, is tight, or needs sharding."""
    peak = gib(estimate.peak)
    if peak <= GPU_GIB - MARGIN_GIB:
        return "fits"
    return "tight" if peak <= GPU_GIB else "needs FSDP"


def row(name: str, estimate: MemoryEstimate, markdown: bool, fsdp: str | None = None) -> str:
    cells = [name, f"≈ {gib(estimate.peak):.1f} GiB", f"{gib(estimate.resident):.1f} GiB", estimate.peak_phase,
             verdict(estimate), *([fsdp] if fsdp is not None else [])]
    if markdown:
        return "| " + " | ".join(cells) + " |"
    return f"{cells[0]:<66} {cells[1]:>12} {cells[2]:>10}  {cells[3]:<26} {'  '.join(cells[4:])}"


def fsdp_cell(config: TrainConfig, estimate: MemoryEstimate) -> str:
    """What ``distar plan`` answers for a layout that does not fit: FSDP's processes and per-process figure."""
    if verdict(estimate) == "fits":
        return "not needed"
    needs = plan.fsdp_needs(config)  # they do not change the iteration's memory
    sharded = plan.fsdp_processes(estimate, int((GPU_GIB - MARGIN_GIB) * 2**30))
    if sharded is None:
        return f"over {plan.FSDP_PROCESSES[-1]} processes"
    n, per_rank = sharded
    alone = f" (with {', '.join(o.name for o in needs)})" if needs else ""
    return f"{n} processes: ≈ {gib(per_rank):.1f} GiB{alone}"


def estimate_family(family: str, names: list[str] | None, batch: int, markdown: bool, fsdp: bool = False) -> None:
    arch = ARCHITECTURES[family]
    layouts = [(n, o) for n, o in FAMILIES[family][1] if names is None or n in names]
    print(f"{family}: {arch.resolution}² px, batch {batch}, one Algorithm 1 iteration, PickScore ViT-H/14 reward; "
          "peak allocated GPU memory, estimated on fake tensors")
    header = ["layout", "peak (estimate)", "resident", "peak during", "one 80 GB GPU"]
    if fsdp:
        header.append("FSDP per process (planner's arithmetic)")
    if markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    else:
        print(f"{header[0]:<66} {header[1]:>12} {header[2]:>10}  {header[3]:<26} {header[4]}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_architecture(Path(tmp) / family, family)
        reward = write_pickscore_architecture(Path(tmp) / "pickscore")
        for name, overrides in layouts:
            tick = time.process_time()
            config = family_config(family, folder, reward, batch, overrides)
            estimate = estimate_iteration_memory(config)
            print(row(name, estimate, markdown, fsdp_cell(config, estimate) if fsdp else None), flush=True)
            print(f"    ({time.process_time() - tick:.0f} s CPU)", file=sys.stderr, flush=True)


def validate() -> None:
    """The estimate of a tiny model's iteration against the same iteration measured on real tensors."""
    overrides = ["loop.assistant_steps=1", "loop.mixed_precision=bf16"]
    config = load_config(TrainConfig, CONFIGS / "tiny_sdxl.yaml", overrides)
    predicted = estimate_iteration_memory(config, device_model="cpu")
    measured = estimate_iteration_memory(config, fake=False, device_model="cpu")
    assert measured.allocator_peak is not None
    print("tiny SDXL-shaped model (configs/tiny_sdxl.yaml, one assistant step, bf16 autocast), CPU, bytes")
    print(f"predicted peak (fake tensors)              {predicted.peak:>10,}  during {predicted.peak_phase}")
    print(f"measured peak (real tensors, same tracker) {measured.peak:>10,}  "
          f"ratio {predicted.peak / measured.peak:.4f}")
    print(f"CPU allocator's peak (real tensors)        {measured.allocator_peak:>10,}  "
          f"ratio {predicted.peak / measured.allocator_peak:.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=list(FAMILIES), default="sdxl")
    parser.add_argument("--layouts", nargs="*", help="layout names (default: all of the family's)")
    parser.add_argument("--batch", type=int, default=1, help="prompts per GPU and update")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--validate", action="store_true", help="compare the estimate with a measured tiny run")
    parser.add_argument("--fsdp", action="store_true", help="add distar plan's FSDP figure for layouts that do not fit")
    args = parser.parse_args(argv)
    env = environment()
    print(f"torch {env['torch']}, diffusers {env['diffusers']}, {torch.get_num_threads()} thread(s)", file=sys.stderr)
    if args.validate:
        validate()
    else:
        estimate_family(args.family, args.layouts, args.batch, args.markdown, args.fsdp)


if __name__ == "__main__":
    main()
