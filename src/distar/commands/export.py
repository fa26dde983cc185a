"""``distar export``: a training checkpoint as a diffusers pipeline (or LoRA) folder, an original-layout
single file or a kohya LoRA, with a Hub model card."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint-<step>/ folder, or a run folder (latest)")
    parser.add_argument(
        "--out", required=True, metavar="DIR",
        help="output folder (its name also names the file of --format single-file or kohya)",
    )
    parser.add_argument(
        "--best", action="store_true", help="export the run folder's best/ checkpoint (kept by the training monitor)"
    )
    parser.add_argument("--no-ema", action="store_true", help="export the raw generator weights, not the EMA ones")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="dtype of the written weights"
    )
    parser.add_argument(
        "--lora",
        action="store_true",
        help="write only the generator's LoRA (diffusers' pytorch_lora_weights.safetensors, for "
        "pipe.load_lora_weights) instead of a merged pipeline",
    )
    parser.add_argument(
        "--format",
        choices=["diffusers", "single-file", "kohya"],
        default="diffusers",
        help="diffusers: a pipeline (or LoRA) folder; single-file: one .safetensors in the original SD/SDXL "
        "key layout for ComfyUI and A1111/Forge, with a ComfyUI workflow; kohya (with --lora): the LoRA as "
        "a kohya-format .safetensors (lora_unet_* keys, alpha tensors)",
    )
    parser.add_argument("--license", help="licence of the card (default: the base models' licence)")
    parser.add_argument("--eval", metavar="DIR", help="`distar eval --out` folder whose tables go into the card")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the validated folder to this hub model repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo private (with --push-to-hub)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from distar.errors import UserError
    from distar.export.card import push_to_hub, validate_export
    from distar.export.pipeline import export_checkpoint
    from distar.io import safe_name, writable_dir

    dtype = getattr(torch, args.dtype)
    if args.best:
        from distar.train.checkpoint import best_checkpoint

        args.checkpoint = str(best_checkpoint(args.checkpoint))
    out = Path(args.out)
    safe_name(out.name, "--out")
    writable_dir(out.parent, "--out")
    try:
        out = export_checkpoint(
            args.checkpoint,
            args.out,
            use_ema=not args.no_ema,
            overwrite=args.overwrite,
            dtype=dtype,
            lora=args.lora,
            format=args.format,
            license=args.license,
            eval_dir=args.eval,
            repo_id=args.push_to_hub,
        )
    except FileExistsError:
        raise UserError(f"--out: {args.out} exists and is not empty (pass --overwrite to replace it)") from None
    validate_export(out, require_license=bool(args.push_to_hub))
    print(f"exported {args.checkpoint} to {out}")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(out, args.push_to_hub, private=args.private)}")
    return 0
