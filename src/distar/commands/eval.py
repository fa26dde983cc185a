"""``distar eval``: the paper's Table 1 (and Table 3 for HPS) for any models, in one command.

Example::

    distar eval --model stabilityai/stable-diffusion-xl-base-1.0::name=sdxl,steps=50,guidance=7.5 \\
                --model runs/distar/export::name=di_star,steps=1,guidance=0,timesteps=399 \\
                --benchmark parti --metrics imagereward,aesthetic,pickscore,clip --out results/parti

Flags override the keys of an optional ``--config`` YAML (:class:`distar.eval.config.EvalConfig`),
and ``key=value`` arguments override both. Re-running with the same ``--out`` resumes; SIGTERM, SIGINT
or SIGUSR1 end the run after the batch in progress, with exit status 75.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distar.commands import add_config_flags, config_flag_values
from distar.eval.config import EvalConfig
from distar.runtime import add_threads_argument

#: EvalConfig fields given as flags of the same name (help and type from the field), in --help order;
#: ``out_dir`` is ``--out``.
_FLAG_FIELDS = (
    "benchmark", "benchmark_path", "out_dir", "num_images", "batch_size", "device", "metric_dtype",
    "timing_images", "fid_reference", "fid_resolution", "local_files_only",
)
_RENAMED = {"out_dir": "out"}


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got '{text}'") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        metavar="PATH[::key=value,...]",
        help="diffusers pipeline (folder or hub id) or distar training checkpoint, with sampling options "
        "name, steps, guidance, timesteps, scheduler, unet, height, width, dtype, variant, device, ema; repeatable",
    )
    add_config_flags(parser, EvalConfig, _FLAG_FIELDS[:2], flags=_RENAMED)
    parser.add_argument("--metrics", help="comma list: imagereward,aesthetic,pickscore,clip,hpsv2,hpsv2.1,fid,diversity,prompt_diversity")
    parser.add_argument(
        "--metric-path",
        action="append",
        metavar="NAME=PATH",
        help="model location for a metric (hub id, folder, file; 'tiny' for a tiny random model); "
        "fid=inception-2015-12-05.pt, diversity (prompt_diversity)=CLIP model; repeatable",
    )
    add_config_flags(parser, EvalConfig, _FLAG_FIELDS[2:3], flags=_RENAMED)
    parser.add_argument("--seeds", type=_seeds, nargs="+", help="seeds, e.g. '0 1 2' or '0,1,2' (default 0)")
    add_config_flags(parser, EvalConfig, _FLAG_FIELDS[3:], flags=_RENAMED)
    parser.add_argument("--config", help="YAML EvalConfig; flags override it")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the config")


def _config_data(args: argparse.Namespace) -> dict[str, Any]:
    from distar.config import apply_overrides, read_config_file
    from distar.errors import UserError
    from distar.eval.metrics import parse_metric_names
    from distar.inference.spec import parse_model_spec

    data = read_config_file(args.config) if args.config else {}
    data.update(config_flag_values(args, _FLAG_FIELDS))
    if args.seeds:
        data["seeds"] = [seed for group in args.seeds for seed in group]
    if args.model:
        data["models"] = [parse_model_spec(text) for text in args.model]
    if args.metrics:
        data["metrics"] = parse_metric_names(args.metrics)
    for item in args.metric_path or []:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise UserError(f"--metric-path '{item}' is not of the form NAME=PATH")
        data.setdefault("metric_paths", {})[name.strip().lower()] = path
    return apply_overrides(data, args.overrides)


def run(args: argparse.Namespace) -> int:
    from distar.config import config_yaml, from_dict, save_config
    from distar.eval.suite import run_eval

    config = from_dict(EvalConfig, _config_data(args))
    if args.dry_run:
        print(config_yaml(config), end="")
        return 0
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # per-call scheduler notices would drown the progress bars
    from distar.io import writable_dir
    from distar.runtime import torch_device

    for where in [config.device, *(spec.device for spec in config.models)]:
        if where is not None:
            torch_device(where, "device")
    writable_dir(config.out_dir, "--out")
    save_config(config, Path(config.out_dir) / "eval_config.yaml")
    from distar.train.callbacks import FaultHook
    from distar.train.preemption import StopSignals

    kept = f"the results so far are kept in {config.out_dir} (run the same command again to continue)"
    with StopSignals(last_checkpoint=lambda: kept) as stop:  # a stop signal: finish the batch, exit 75
        fault = FaultHook.from_env()  # tests: $DISTAR_KILL_AT signals the process after a chosen batch
        on_point = (lambda point, n: fault.on_point(None, point, n)) if fault else (lambda point, n: None)
        summary = run_eval(config, threads=args.threads, stop=stop, on_point=on_point)
    print(f"{summary.benchmark}: {summary.prompts} prompts from {summary.source}")
    print(Path(config.out_dir, "summary.md").read_text(), end="")
    return 0
