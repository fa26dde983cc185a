"""One-GPU check of the documented SDXL layouts with random weights: peak memory (measured and estimated),
step time, one-step vs 50-step CFG generation. Needs no internet: the models are built from SDXL's
and PickScore's published architectures.

    python bench/gpu_check.py                      # SDXL at 1024², batch 1, on cuda (about 10 GB of disk)
    python bench/gpu_check.py --layouts "24 GB recipe (sdxl_24gb.yaml)"    # the 24 GB recipe alone
    python bench/gpu_check.py --size tiny --device cpu --iterations 1 --estimates off   # the same code, tiny

On a GPU machine without internet, from the repository root: ``pip install -e .`` (or, offline, the
wheels of distar and its dependencies carried there: torch, diffusers, transformers, accelerate, peft,
safetensors; bitsandbytes for the 8-bit optimiser the recipes use), then
``HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/gpu_check.py 2>&1 | tee gpu_check.txt``: one command,
every layout below, about 10 GB of disk. Without bitsandbytes the layouts run with AdamW (more memory;
the estimates follow the same config).

For each layout of docs/backends.md ("SDXL on one GPU", "Layouts and what they cost" and "A 24 GB
recipe"; none sharded) it builds distar's Trainer on a pipeline folder written here (SDXL UNet, VAE and
both text encoders of :mod:`distar.testing.architectures` with random weights; a character-level
tokenizer) with PickScore's CLIP ViT-H/14 as the reward, random weights too. It runs ``--iterations``
Algorithm 1 iterations with the layout's config (the 80 GB recipe ``configs/sdxl_dmd2_pickscore.yaml``
with one change, or ``configs/sdxl_24gb.yaml``; batch 1, 8-bit Adam when bitsandbytes is installed)
and prints the peak of ``torch.cuda.max_memory_allocated`` after a warm-up iteration, next to the
estimate that :func:`distar.train.memory.estimate_iteration_memory` makes for the same config on fake
tensors, and the median time per iteration. The estimates run in ``--estimates parallel`` CPU processes
while the GPU measures (``inline``: after each layout; ``off``: none). Then it times one-step generation
(generator + VAE decode) against ``--steps``-step CFG sampling with the diffusers pipeline, for
``--images`` images. At ``--size tiny`` the reward is left out.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline

from distar.config import load_config
from distar.runtime import environment
from distar.testing.architectures import random_component, write_architecture, write_pickscore_architecture
from distar.testing.pipelines import save_tiny_pipeline
from distar.train import TrainConfig, build_trainer
from distar.train.memory import estimate_iteration_memory, gib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE = "sdxl_dmd2_pickscore.yaml"

#: name -> (config in configs/, overrides): the 80 GB recipe with one change each, and the 24 GB recipe.
LAYOUTS = {
    "recipe: shared LoRA-64 assistant": (RECIPE, []),
    "LoRA-64 assistant on a copy": (RECIPE, ["model.assistant_lora_shared=false"]),
    "full assistant copy (DMD2's)": (RECIPE, ["model.assistant_lora_rank=0"]),
    "LoRA-64 generator + shared assistant": (RECIPE, ["model.generator_lora_rank=64"]),
    "recipe without checkpointing": (RECIPE, ["model.gradient_checkpointing=false"]),
    "24 GB recipe (sdxl_24gb.yaml)": ("sdxl_24gb.yaml", []),
}


def write_sdxl(folder: Path) -> Path:
    """SDXL base with random weights (float16 files), saved as a diffusers pipeline folder."""
    write_architecture(folder, "sdxl")
    torch.manual_seed(0)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        random_component(folder, "sdxl", part).to(torch.float16).save_pretrained(folder / part)
    return folder


def pickscore_folder(folder: Path) -> Path:
    """Where PickScore's architecture is written, beside the pipeline folder ``folder``."""
    return folder.with_name("pickscore")


def layout_config(folder: Path, size: str, device: str, layout: str, iterations: int, out: str) -> TrainConfig:
    """Layout ``layout`` of :data:`LAYOUTS` on the pipeline in ``folder``, batch 1, as measured: PickScore
    with random weights as the reward (no reward at tiny size)."""
    tiny = size == "tiny"
    use_8bit = importlib.util.find_spec("bitsandbytes") is not None and device != "cpu"
    config_file, overrides = LAYOUTS[layout]
    reward = f"{{name: pickscore, path: {pickscore_folder(folder)}, random_weights: true, dtype: bfloat16}}"
    return load_config(TrainConfig, CONFIGS / config_file, [
        f"model.pretrained={folder}", "model.variant=null", "model.generator_init=null",
        *(["rewards=[]", "objective.reward_scale=0"] if tiny else [f"rewards=[{reward}]"]),
        "data.source=null", "data.batch_size=1", f"output_dir={out}",
        "sampling.every=0", "checkpointing.every=0", "checkpointing.save_final=false",
        "logging.report_to=none", "logging.progress_bar=false", f"loop.max_steps={iterations + 1}",
        f"loop.cpu={str(device == 'cpu').lower()}", f"optim.use_8bit_adam={str(use_8bit).lower()}",
        *(["model.resolution=16", "loop.mixed_precision='no'", "loop.assistant_steps=1"] if tiny else []),
        "data.prompts=[a photo of an astronaut riding a horse on the moon, a watercolour fox]", *overrides,
    ])


def estimate_gib(folder: Path, size: str, device: str, layout: str, iterations: int) -> float:
    """The fake-tensor estimate of a layout's peak allocated GiB (on the CPU, one thread)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        config = layout_config(folder, size, device, layout, iterations, out)
    return gib(estimate_iteration_memory(config).peak)


def run_layout(folder: Path, size: str, device: str, layout: str, iterations: int) -> tuple[float, float]:
    """(peak allocated GiB or nan off CUDA, median seconds per iteration) of one layout."""
    from accelerate.state import AcceleratorState

    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(layout_config(folder, size, device, layout, iterations, out))
        trainer.train_step()  # warm-up
        if device != "cpu":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iterations):
            tick = time.perf_counter()
            trainer.train_step()
            if device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tick)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else float("nan")
        del trainer
        AcceleratorState._reset_state(reset_partial_state=True)
        gc.collect()
        if device != "cpu":
            torch.cuda.empty_cache()
        return peak, statistics.median(times)


def generation_seconds(folder: Path, device: str, images: int, steps: int) -> tuple[float, float]:
    """(one step without CFG, ``steps`` steps with CFG 7.5) seconds for ``images`` decoded images."""
    dtype = torch.float32 if device == "cpu" else torch.float16
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of a cat"] * images

    def timed(**kwargs: object) -> float:
        generator = torch.Generator(device).manual_seed(0)
        tick = time.perf_counter()
        pipe(prompts, generator=generator, **kwargs)
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - tick

    timed(num_inference_steps=1, guidance_scale=0.0)  # warm-up
    return timed(num_inference_steps=1, guidance_scale=0.0), timed(num_inference_steps=steps, guidance_scale=7.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("sdxl", "tiny"), default="sdxl")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--images", type=int, default=2, help="images per generation timing")
    parser.add_argument("--steps", type=int, default=50, help="steps of the CFG sampler")
    parser.add_argument("--layouts", nargs="*", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--estimates", choices=("parallel", "inline", "off"), default="parallel",
                        help="fake-tensor estimates in CPU processes during the GPU runs, after each, or none")
    args = parser.parse_args(argv)
    env = environment()
    print(f"{env['device']}, torch {env['torch']}, diffusers {env['diffusers']}; {args.size}, batch 1", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipe"
        tick = time.perf_counter()
        pending: dict[str, Future] = {}
        pool = ProcessPoolExecutor(len(args.layouts), mp_context=multiprocessing.get_context("spawn"))
        if args.size == "sdxl":
            write_architecture(folder, "sdxl")  # configs first: the estimates need nothing else
            write_pickscore_architecture(pickscore_folder(folder))
            if args.estimates == "parallel":
                pending = {
                    name: pool.submit(estimate_gib, folder, args.size, args.device, name, args.iterations)
                    for name in args.layouts
                }
            write_sdxl(folder)
        else:
            save_tiny_pipeline(folder, "sdxl")
        print(f"random-weight pipeline written in {time.perf_counter() - tick:.0f} s", flush=True)
        print(f"{'layout':<38} {'peak GiB':>9} {'estimate':>9} {'s / iteration':>14}", flush=True)
        for name in args.layouts:
            peak, seconds = run_layout(folder, args.size, args.device, name, args.iterations)
            if name in pending:
                estimate = pending[name].result()
            elif args.estimates != "off":
                estimate = estimate_gib(folder, args.size, args.device, name, args.iterations)
            else:
                estimate = float("nan")
            print(f"{name:<38} {peak:9.2f} {estimate:9.2f} {seconds:14.3f}", flush=True)
        pool.shutdown()
        one, many = generation_seconds(folder, args.device, args.images, args.steps)
        print(f"\n{args.images} image(s): one step {one:.3f} s, {args.steps}-step CFG {many:.3f} s, "
              f"ratio {one / many:.4f}")


if __name__ == "__main__":
    sys.exit(main())
