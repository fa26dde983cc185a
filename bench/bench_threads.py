"""Where more CPU threads start to pay off: one UNet training pass at 1 thread vs all cores, by size.

    env -u OMP_NUM_THREADS python bench/bench_threads.py [--reps 5] [--batch 2] [--side 16]

For SDXL-shaped UNets of growing width, times forward + backward at one thread and at every core
this process may use, interleaved, and prints medians, ranges and the ratio (>1: more threads are
faster). ``distar.runtime.MULTI_THREAD_PARAMETERS`` is the smallest size at which the ratio was
above 1 on the machine it was set from; rerun this on yours (and with the load you expect).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from distar.runtime import available_cores, environment

WIDTHS = ((8, 16), (32, 64), (64, 128), (128, 256), (192, 384), (320, 640))


def sdxl_shaped_unet(widths: tuple[int, int]) -> UNet2DConditionModel:
    """A two-level SDXL-style UNet (text-time conditioning) with the given block widths."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=widths,
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
    )


def training_pass(unet: UNet2DConditionModel, batch: int, side: int) -> None:
    x = torch.randn(batch, 4, side, side)
    cond = {"text_embeds": torch.randn(batch, 16), "time_ids": torch.randn(batch, 6)}
    out = unet(x, torch.full((batch,), 500), torch.randn(batch, 8, 32), added_cond_kwargs=cond).sample
    out.square().mean().backward()


def seconds(unet: UNet2DConditionModel, threads: int, batch: int, side: int) -> float:
    torch.set_num_threads(threads)
    tick = time.perf_counter()
    training_pass(unet, batch, side)
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--side", type=int, default=16, help="latent side length")
    args = parser.parse_args()
    many = available_cores()
    env = environment()
    print(f"{env['device']}, {many} cores, load average {env['load_average']}; batch {args.batch}, {args.side}²")
    print(f"{'parameters':>11} {'1 thread s':>18} {f'{many} threads s':>18} {'1 / many':>9}")
    for widths in WIDTHS:
        torch.manual_seed(0)
        unet = sdxl_shaped_unet(widths)
        params = sum(p.numel() for p in unet.parameters())
        for threads in (1, many):  # warm-up
            seconds(unet, threads, args.batch, args.side)
        one, multi = [], []
        for _ in range(args.reps):  # interleaved
            one.append(seconds(unet, 1, args.batch, args.side))
            multi.append(seconds(unet, many, args.batch, args.side))
        m1, mm = statistics.median(one), statistics.median(multi)
        print(
            f"{params:11,d} {m1:8.4f} [{min(one):.3f}-{max(one):.3f}] {mm:8.4f} [{min(multi):.3f}-{max(multi):.3f}]"
            f" {m1 / mm:9.2f}"
        )
    print(f"load average at end {[round(v, 2) for v in os.getloadavg()]}")


if __name__ == "__main__":
    main()
