"""``distar generate``: one image from a one- or few-step generator, one network evaluation per step."""

from __future__ import annotations

import argparse

from distar.runtime import add_threads_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="folder written by `distar export`, a training checkpoint-<step>/ folder, or a run folder (latest)",
    )
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise z (CPU generator)")
    parser.add_argument("--out", default="image.png", help="output .png file (default: image.png)")
    parser.add_argument("--height", type=int, help="image height in pixels, a multiple of 8 (default: the model's)")
    parser.add_argument("--width", type=int, help="image width in pixels, a multiple of 8 (default: the model's)")
    parser.add_argument("--no-ema", action="store_true", help="checkpoints: use the raw, not the EMA, weights")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="weights dtype (default: float16 on cuda, else float32)",
    )
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from distar.errors import UserError
    from distar.export.pipeline import generator_images, load_generator
    from distar.io import safe_name, writable_dir
    from distar.runtime import check_image_side, check_seed, configure_threads, count_parameters, report_threads, torch_device
    from distar.train.logs import save_png

    # Every argument is checked before the model is loaded.
    device = torch_device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    if not Path(args.model).exists():
        raise UserError(f"--model: no such folder: {args.model}")
    check_seed(args.seed, "--seed")
    check_image_side(args.height, "--height")
    check_image_side(args.width, "--width")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out: {args.out[:200]} is not a .png file name")
    safe_name(out.name, "--out")
    writable_dir(out.parent, "--out")
    pipe, call = load_generator(args.model, use_ema=not args.no_ema, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    report_threads(configure_threads(args.threads, parameters=count_parameters(*modules), device=device), "generate")
    pipe.to(device)
    image = generator_images(pipe, [args.prompt], [args.seed], call=call, height=args.height, width=args.width)[0]
    save_png(image, out)
    steps = call.get("timesteps") or call.get("sigmas")
    print(f"wrote {out} ({image.shape[-1]}x{image.shape[-2]}, steps at {steps}, seed {args.seed})")
    return 0
