"""``distar export``: a training checkpoint as a standard diffusers pipeline folder with a model card."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint-<step>/ folder, or a run folder (latest)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (diffusers layout)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw generator weights, not the EMA ones")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="dtype of the written weights"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from distar.errors import UserError
    from distar.export import export_checkpoint

    dtype = getattr(torch, args.dtype)
    try:
        out = export_checkpoint(args.checkpoint, args.out, not args.no_ema, args.overwrite, dtype)
    except FileExistsError as err:
        raise UserError(str(err)) from None
    print(f"exported {args.checkpoint} to {out}")
    return 0
