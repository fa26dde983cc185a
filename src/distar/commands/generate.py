"""``distar generate``: one image from a one- or few-step generator, one network evaluation per step."""

from __future__ import annotations

import argparse

from distar.commands import add_config_flags, config_flag_values
from distar.inference.spec import ModelSpec
from distar.runtime import add_threads_argument

#: ModelSpec keys given as flags (help, type, choices and default from the fields): how the model is
#: loaded and sampled, as ``distar eval --model PATH::key=value`` takes them.
_FLAG_FIELDS = ("height", "width", "ema", "device", "dtype")


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
    add_config_flags(parser, ModelSpec, _FLAG_FIELDS)
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import torch

    from distar.errors import UserError, first_line
    from distar.export.card import METADATA_FILE
    from distar.inference.models import DiffusersModel
    from distar.io import safe_name, writable_dir
    from distar.runtime import check_seed, configure_threads, count_parameters, report_threads, torch_device
    from distar.train.logs import save_png

    # Every argument is checked before the model is loaded.
    spec = ModelSpec(args.model, **config_flag_values(args, _FLAG_FIELDS))  # checks height and width
    device = torch_device(spec.device)
    if not Path(spec.path).exists():
        raise UserError(f"--model: no such folder: {spec.path}")
    check_seed(args.seed, "--seed")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out: {args.out[:200]} is not a .png file name")
    safe_name(out.name, "--out")
    writable_dir(out.parent, "--out")
    model = DiffusersModel(dataclasses.replace(spec, device=str(device)))
    if not model.few_step:
        raise FileNotFoundError(f"{spec.path}: no {METADATA_FILE}; not a distar export (nor a training checkpoint)")
    modules = [m for m in model.pipeline.components.values() if isinstance(m, torch.nn.Module)]
    report_threads(configure_threads(args.threads, parameters=count_parameters(*modules), device=device), "generate")
    try:
        image = model.generate_images([args.prompt], [args.seed])[0]
    except ValueError as err:  # the pipeline's own input checks, e.g. a side its VAE cannot take
        raise UserError(f"--model {spec.path}: the pipeline refuses to sample ({first_line(err)})") from None
    save_png(image, out)
    options = model.sampling_options()
    steps = options.get("timesteps") or options.get("sigmas")
    print(f"wrote {out} ({image.shape[-1]}x{image.shape[-2]}, steps at {steps}, seed {args.seed})")
    return 0
