"""``distar serve``: a local page that generates with a one-step model as the user types."""

from __future__ import annotations

import argparse

from distar.runtime import add_threads_argument

#: The models are fixed when the server starts; the page cannot name others.
MODEL_FLAGS = {
    "--model": "one-step model: `distar export` folder, training checkpoint, run folder (latest checkpoint, EMA "
    "when saved), or diffusers pipeline folder or hub id (default: the shapes world's shipped models)",
    "--reference": "multi-step model to compare with, sampled at the page's steps and CFG ω "
    "(default: the shapes world's reference when --model is not given, else none)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, help_text in MODEL_FLAGS.items():
        parser.add_argument(flag, metavar="PATH_OR_ID", help=help_text)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than localhost, and requests naming any host (anyone who can reach it can generate)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages of this origin (e.g. https://example.org; '*' for any) call /generate; by default "
        "only the server's own page can (repeatable)",
    )
    parser.add_argument(
        "--collect", metavar="DIR",
        help="also serve /collect, a page that records which of two images the user prefers into DIR "
        "(pairs.jsonl and images/, the layout `distar rewards train --data DIR` reads)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from distar.errors import UserError

    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("needs the serve extra: pip install 'distar[serve]'") from None
    from distar.serve import LOCAL_HOSTS

    if args.host not in LOCAL_HOSTS and not args.allow_remote:
        raise UserError(f"--host {args.host} serves to other machines; pass --allow-remote to confirm")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")

    import torch

    from distar.inference.models import default_device
    from distar.io import writable_dir
    from distar.runtime import configure_threads, report_threads, stored_parameters
    from distar.serve.app import create_app
    from distar.serve.models import load_models
    from distar.worlds.shapes.assets import ASSETS_DIR

    collect = writable_dir(args.collect, "--collect") if args.collect is not None else None
    device = torch.device(args.device or default_device())
    print(f"loading {args.model or 'the shapes world models'} on {device} ...", flush=True)
    models = load_models(args.model, args.reference, device)
    sizes = [stored_parameters(path) for path in (args.model or ASSETS_DIR, args.reference) if path is not None]
    parameters = None if None in sizes else sum(sizes)
    report_threads(configure_threads(args.threads, parameters=parameters, device=device), "serve")
    host = f"[{args.host}]" if ":" in args.host else args.host
    more_routes = None
    if collect is not None:
        from distar.serve.collect import collection_routes

        more_routes = lambda queue: collection_routes(models, queue, collect)  # noqa: E731
        print(f"collecting choices into {collect} at http://{host}:{args.port}/collect", flush=True)
    print(f"serving {models.one_step_name} at http://{host}:{args.port}/ (Ctrl+C to stop)", flush=True)
    app = create_app(models, allow_remote=args.allow_remote, allow_origins=args.allow_origin, more_routes=more_routes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
