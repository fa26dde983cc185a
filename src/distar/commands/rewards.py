"""``distar rewards``: score a folder of images with reward models and print a table;
``distar rewards train``: fine-tune a reward model on preference pairs (:mod:`distar.train.reward_model`).

Images are the ``.png``/``.jpg``/``.jpeg``/``.webp``/``.bmp`` files directly in ``--images``, in
sorted filename order. Prompts are matched to them by one rule, chosen by ``--prompts``:

- a file whose records have an ``image`` field (``.jsonl``/``.json``/``.csv``/``.tsv``): each record
  scores that image (a path relative to ``--images``) with its prompt (``prompt``/``caption``/``text``);
- any other prompt file (e.g. ``.txt``, one prompt per line): line i goes with the i-th image;
  the counts must be equal;
- text that is not a file: that prompt for every image.

Scores use the differentiable torch preprocessing of the reward path on the decoded files; the
reference implementations resize with PIL, which can differ slightly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distar.commands import add_config_flags, config_flag_values
from distar.rewards.spec import REWARD_NAMES, RewardSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

#: RewardSpec keys given as flags (help, type, choices and default from the fields), for every reward
#: scored; ``form`` (PickScore's alone) is ``--pickscore-form``.
_FLAG_FIELDS = ("form", "dtype", "local_files_only")
_RENAMED = {"form": "pickscore_form"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    train = sub.add_parser(
        "train",
        help="fine-tune a CLIP-architecture reward model on preference pairs (Bradley–Terry, as PickScore)",
        description="Fine-tune a CLIPModel on preference pairs with the Bradley–Terry loss of its temperature-"
        "scaled image-text cosines (ties as half wins); the output folder loads as "
        "rewards: [{name: pickscore, path: OUT}]. Settings: --dry-run lists them.",
    )
    train.add_argument(
        "--data", required=True,
        help="a JSONL of prompt/image_0/image_1/label, a collection folder, or Pick-a-Pic parquet",
    )
    train.add_argument("--base", required=True, help="the CLIPModel to start from: folder or hub id")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    train.add_argument("--dry-run", action="store_true", help="print the resolved settings and exit")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. steps=2000 lr=1e-5")
    parser.add_argument("--images", help="folder of images to score")
    parser.add_argument(
        "--prompts",
        help="a .txt with one prompt per image (sorted filename order), a .jsonl/.json/.csv/.tsv with "
        "'image' and 'prompt' fields, or one prompt text for every image",
    )
    parser.add_argument(
        "--rewards", default="pickscore",
        help=f"comma list of {','.join(REWARD_NAMES)} or reward plugins (module:Class or an installed entry "
        "point; docs/rewards-own.md) (default: pickscore)",
    )
    parser.add_argument(
        "--options", action="append", default=[], metavar="NAME=JSON",
        help="keyword arguments of a reward plugin's class as a JSON object (repeatable)",
    )
    parser.add_argument(
        "--model-path", action="append", default=[], metavar="NAME=PATH",
        help="weights for one reward: hub id, folder, checkpoint file, or 'tiny' (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_config_flags(parser, RewardSpec, _FLAG_FIELDS, flags=_RENAMED)
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the scores as JSON")


def _pairs(images_dir: Path, prompts: str) -> list[tuple[Path, str]]:
    """(image file, prompt) pairs by the module's matching rule."""
    from distar.errors import UserError
    from distar.io import prompt_column, read_records, read_some

    if not images_dir.is_dir():
        raise UserError(f"--images: not a folder: {images_dir}")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not Path(prompts).is_file():
        if not files:
            raise UserError(f"--images: no {'/'.join(IMAGE_SUFFIXES)} files in {images_dir}")
        return [(f, prompts) for f in files]
    records = read_some(lambda: read_records(prompts), prompts)
    column = prompt_column(records)
    if records and all("image" in r for r in records):
        pairs = [(images_dir / r["image"], r[column]) for r in records]
        missing = [str(p) for p, _ in pairs if not p.is_file()]
        if missing:
            raise UserError(f"{prompts}: {len(missing)} image(s) not found, e.g. {missing[0]}")
        return pairs
    if len(records) != len(files):
        raise UserError(
            f"{prompts} has {len(records)} prompts but {images_dir} has {len(files)} images "
            "(one prompt per image in sorted filename order, or a JSONL with image and prompt fields)"
        )
    return [(f, r[column]) for f, r in zip(files, records)]


def run(args: argparse.Namespace) -> int:
    if args.action == "train":
        return _train(args)
    return _score(args)


def _train(args: argparse.Namespace) -> int:
    from distar.config import apply_overrides, config_yaml, from_dict
    from distar.train.reward_model import RewardTrainConfig, train_reward_model

    data = apply_overrides({"data": args.data, "base": args.base, "out": args.out}, args.overrides)
    config = from_dict(RewardTrainConfig, data)
    if args.dry_run:
        print(config_yaml(config), end="")
        return 0
    report = train_reward_model(config, resume=args.resume, overwrite=args.overwrite)
    before, after = report["before"], report["after"]
    print(
        f"held-out agreement {before['agreement']:.3f} -> {after['agreement']:.3f} "
        f"({report['heldout_pairs']} pairs), tie-aware accuracy {after['tie_aware_accuracy']:.3f}, "
        f"ECE {after['ece']:.3f}; wrote {config.out} (report: {config.out}/report.md)"
    )
    return 0


def _score(args: argparse.Namespace) -> int:
    import json

    import torch
    from tqdm import tqdm

    from distar.errors import UserError
    from distar.io import load_image, safe_name, writable_dir
    from distar.rewards import load_reward
    from distar.rewards.spec import is_plugin_name
    from distar.runtime import torch_device

    if args.images is None or args.prompts is None:
        raise UserError("--images and --prompts are required to score a folder (or: distar rewards train ...)")
    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    unknown = [n for n in names if n not in REWARD_NAMES and not is_plugin_name(n)]
    if not names or unknown:
        bad = unknown[0] if unknown else ""
        raise UserError(
            f"--rewards: unknown reward '{bad}' (choose from {', '.join(REWARD_NAMES)}, "
            "or a plugin as module:Class or an installed entry point)"
        )
    builtin = [n for n in names if n in REWARD_NAMES]
    paths: dict[str, str] = {}
    for item in args.model_path:
        name, sep, path = item.partition("=")
        if not sep or name not in builtin:
            raise UserError(f"--model-path '{item}': expected NAME=PATH with NAME one of {', '.join(builtin)}")
        paths[name] = path
    plugin_options: dict[str, dict] = {}
    for item in args.options:
        name, sep, text = item.partition("=")
        if not sep or name not in names or name in builtin:
            raise UserError(f"--options '{item}': expected NAME=JSON with NAME one of the plugins in --rewards")
        try:
            plugin_options[name] = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"--options '{item}': not JSON ({err.msg})") from None
        if not isinstance(plugin_options[name], dict):
            raise UserError(f"--options '{item}': expected a JSON object")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    pairs = _pairs(Path(args.images), args.prompts)
    device = torch_device(args.device)
    if args.json_out:
        safe_name(Path(args.json_out).name, "--json")
        writable_dir(Path(args.json_out).parent, "--json")

    options = config_flag_values(args, _FLAG_FIELDS)
    form = {"form": options.pop("form")} if "form" in options else {}
    scores: dict[str, list[float]] = {}
    for name in names:
        if name in builtin:
            spec = RewardSpec(name, path=paths.get(name), **options, **(form if name == "pickscore" else {}))
        else:
            spec = RewardSpec(name, options=plugin_options.get(name, {}), dtype=options.get("dtype"))
        reward = load_reward(spec, device=device)
        values: list[float] = []
        for start in tqdm(range(0, len(pairs), args.batch_size), desc=name, disable=len(pairs) <= args.batch_size):
            batch = pairs[start : start + args.batch_size]
            images = [load_image(path) for path, _ in batch]
            prompts = [prompt for _, prompt in batch]
            with torch.no_grad():
                if all(img.shape == images[0].shape for img in images):
                    values += reward.score(torch.stack(images).to(device), prompts).tolist()
                else:  # mixed sizes: one image at a time
                    values += [float(reward.score(img[None].to(device), [p])) for img, p in zip(images, prompts)]
        scores[name] = values
        del reward

    width = max(len("mean"), *(len(p.name) for p, _ in pairs))
    print(f"{'image':<{width}}  " + "  ".join(f"{n:>12}" for n in names))
    for i, (path, _) in enumerate(pairs):
        print(f"{path.name:<{width}}  " + "  ".join(f"{scores[n][i]:>12.4f}" for n in names))
    means = {n: sum(v) / len(v) for n, v in scores.items()}
    print(f"{'mean':<{width}}  " + "  ".join(f"{means[n]:>12.4f}" for n in names))
    if args.json_out:
        record = {
            "images": [str(p) for p, _ in pairs], "prompts": [t for _, t in pairs],
            "scores": scores, "mean": means, "pickscore_form": RewardSpec("pickscore", **form).form,
        }
        Path(args.json_out).write_text(json.dumps(record, indent=2))
    return 0
