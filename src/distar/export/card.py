"""Hub-ready exports: model names without local paths, licences, the model card, validation, upload.

The card is a ``huggingface_hub.ModelCard`` with ``ModelCardData`` front matter (licence,
``base_model`` = the reference and the generator's init, tags) and a body with the one-step inference
snippet, a summary of the training config and, when given, the ``distar eval`` tables.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from distar.config import ConfigError

logger = logging.getLogger(__name__)

#: Metadata file written next to ``model_index.json`` in exported folders.
METADATA_FILE = "distar.json"

#: Licences of common reference models, used when their own card cannot be read (offline).
KNOWN_LICENSES = {
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-1-base": "openrail++",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
}

#: Tags every distar card carries.
TAGS = ["diffusers", "text-to-image", "distar", "diff-instruct-star", "one-step"]

#: ``huggingface_hub`` cache snapshot folders: ``…/models--<owner>--<name>/snapshots/<revision>``.
_SNAPSHOT = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def hub_id(spec: str | None) -> str | None:
    """The hub repo id a model spec names: ``owner/name`` (not a local folder), the repo of an
    ``owner/name/file`` generator init, or the repo of a hub-cache snapshot folder; else None."""
    if not spec or spec.startswith("tiny:"):
        return None
    path = Path(spec)
    if path.exists():
        match = _SNAPSHOT.search(path.resolve().as_posix())
        if path.is_file():
            match = _SNAPSHOT.search(path.resolve().parent.as_posix()) or match
        return f"{match.group(1)}/{match.group(2)}" if match else None
    repo = "/".join(spec.split("/")[:2])
    return repo if _REPO_ID.match(repo) else None


def portable_name(spec: str | None) -> str | None:
    """A model spec fit to publish: its hub id, ``tiny:<name>``, or a local path's last component."""
    if not spec:
        return spec
    if spec.startswith("tiny:"):
        return spec
    return hub_id(spec) or Path(spec).name


def card_license(spec: str | None) -> str | None:
    """The licence in a model's card: a local folder's (or hub snapshot's) ``README.md``, the hub card,
    or :data:`KNOWN_LICENSES`; None when none is found."""
    if not spec or spec.startswith("tiny:"):
        return None
    path = Path(spec)
    folder = path if path.is_dir() else path.parent if path.is_file() else None
    repo = hub_id(spec)
    found = None
    try:
        if folder is not None and (folder / "README.md").is_file():
            found = ModelCard.load(folder / "README.md").data.license
        elif folder is None and repo is not None:
            found = ModelCard.load(repo).data.license
    except Exception as err:  # offline, no card, unreadable card: fall back to the known table
        logger.info("no model card for %s (%s)", spec, type(err).__name__)
    return found or KNOWN_LICENSES.get(repo or "")


def resolve_license(model: Mapping[str, Any], override: str | None = None) -> str | None:
    """The export's licence: ``override``, else the one licence of the reference and generator init.

    Raises :class:`ConfigError` when they carry different licences and none is given.
    """
    if override:
        return override
    found = {s: lic for s in (model.get("pretrained"), model.get("generator_init")) if (lic := card_license(s))}
    if len(set(found.values())) > 1:
        named = ", ".join(f"{portable_name(s)}: {lic}" for s, lic in found.items())
        raise ConfigError(f"the base models have different licences ({named}); choose one with --license")
    return next(iter(found.values()), None)


def _summary_lines(config: Mapping[str, Any], step: int | None) -> list[str]:
    """Markdown bullets of the training config that matter to a reader of the card."""
    model, objective = config.get("model") or {}, config.get("objective") or {}
    loop, data, optim = config.get("loop") or {}, config.get("data") or {}, config.get("optim") or {}
    rewards = ", ".join(f"{r.get('name')} × {r.get('weight', 1.0):g}" for r in config.get("rewards") or []) or "none"
    lora = model.get("generator_lora_rank") or 0
    lines = [
        f"- method: {objective.get('preset') or 'custom'} (divergence `{objective.get('divergence')}`, "
        f"reward scale α = {objective.get('reward_scale')}, CFG {objective.get('cfg_mode')} ω = "
        f"{objective.get('guidance_scale')})",
        f"- rewards: {rewards}",
        f"- generator: {'LoRA rank ' + str(lora) if lora else 'all UNet weights'}, t_init = {model.get('t_init')}, "
        f"resolution {model.get('resolution') or 'the reference default'}",
        f"- steps: {step if step is not None else '?'} of {loop.get('max_steps')}, batch {data.get('batch_size')} "
        f"per process, {loop.get('assistant_steps')} assistant update(s) per generator update",
        f"- learning rates: generator {(optim.get('generator') or {}).get('lr')}, assistant "
        f"{(optim.get('assistant') or {}).get('lr')}; EMA decay {(config.get('ema') or {}).get('decay')}",
    ]
    return lines


def _eval_section(eval_dir: str | Path) -> list[str]:
    """The tables of a ``distar eval`` results folder (``summary.md``), headings one level down."""
    file = Path(eval_dir) / "summary.md"
    if not file.is_file():
        raise FileNotFoundError(f"{eval_dir}: no summary.md (not a `distar eval --out` folder)")
    body = file.read_text().splitlines()
    body = [line for line in body if not line.startswith("# ")]
    return ["## Evaluation", "", *[("#" + line if line.startswith("##") else line) for line in body]]


def generator_call(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline keyword arguments that run a distar generator, from its ``distar.json``: its k steps
    (``timesteps=[...]`` for UNet pipelines, ``sigmas=[t/1000, ...]`` for flow transformers), no CFG and,
    for flow transformers, the number of text tokens trained with (when recorded). FLUX: ``guidance_scale``
    = its guidance input. FLUX and SANA: the training size (their pipelines default to 1024 px); SANA
    without resolution binning (which would move other sizes to its trained aspect-ratio bins)."""
    from distar.backends.config import FLOW_FAMILIES, FLOW_TIMESTEPS

    family, side = metadata.get("family"), metadata.get("resolution")
    timesteps = [int(t) for t in metadata.get("timesteps") or [metadata["t_init"]]]
    call: dict[str, Any] = {"num_inference_steps": len(timesteps), "guidance_scale": 0.0}
    if family in FLOW_FAMILIES:
        call["sigmas"] = [t / FLOW_TIMESTEPS for t in timesteps]
        if metadata.get("max_sequence_length"):
            call["max_sequence_length"] = int(metadata["max_sequence_length"])
    else:
        call["timesteps"] = timesteps
    if family == "flux":
        call.update(guidance_scale=float(metadata["guidance"]), height=side, width=side)
    if family == "sana":
        call.update(height=side, width=side, use_resolution_binning=False)
    return call


#: The prompt of the card's snippet and Hub widget.
WIDGET_PROMPT = "a photo of a corgi in a field of flowers"

#: ``distar eval`` benchmark → the dataset name the card's ``model-index`` shows.
BENCHMARK_NAMES = {"parti": "PartiPrompts", "coco": "COCO-2014 val captions", "hps": "HPSv2 benchmark"}


def inference_parameters(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The Hub inference parameters that run the generator (:func:`generator_call`: its steps, no CFG,
    its timesteps or sigmas) at the training resolution."""
    side = metadata.get("resolution")
    return {**generator_call(metadata), **({"width": side, "height": side} if side else {})}


def eval_results(eval_dir: str | Path, names: Sequence[str]) -> list[EvalResult]:
    """The scores of one model of a ``distar eval --out`` folder (``summary.json``) as the card's
    ``EvalResult`` entries: its only model, else the one named as one of ``names``; none (with an
    info line) when no row is the export's."""
    file = Path(eval_dir) / "summary.json"
    if not file.is_file():
        raise FileNotFoundError(f"{eval_dir}: no summary.json (not a `distar eval --out` folder)")
    summary = json.loads(file.read_text())
    rows = summary.get("models") or []
    row = rows[0] if len(rows) == 1 else next((r for r in rows if r.get("name") in names), None)
    if row is None:
        named = " or ".join(filter(None, names))
        logger.info("model-index: no row of %s is named %s; the card has the tables only", file, named)
        return []
    benchmark = str(summary.get("benchmark"))
    return [
        EvalResult(
            task_type="text-to-image",
            dataset_type=benchmark,
            dataset_name=BENCHMARK_NAMES.get(benchmark, benchmark),
            metric_type=metric,
            metric_value=round(float(value), 4),
        )
        for metric, value in (row.get("scores") or {}).items()
        if isinstance(value, (int, float)) and math.isfinite(value)
    ]


def _flow(metadata: Mapping[str, Any]) -> bool:
    from distar.backends.config import FLOW_FAMILIES

    return metadata.get("family") in FLOW_FAMILIES


def _timesteps(metadata: Mapping[str, Any]) -> list[int]:
    return list(metadata.get("timesteps") or [metadata["t_init"]])


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _schedule_argument(metadata: Mapping[str, Any]) -> str:
    """The call's schedule: ``timesteps=[t_init, ...]`` (UNets) or ``sigmas=[t_init/1000, ...]`` (flow)."""
    key = "sigmas" if _flow(metadata) else "timesteps"
    return f"{key}={_value(generator_call(metadata)[key])}"


def _snippet(metadata: Mapping[str, Any], pipeline_class: str, where: str) -> list[str]:
    side, steps = metadata.get("resolution"), len(_timesteps(metadata))
    call = {**generator_call(metadata), "height": side, "width": side}
    arguments = ", ".join(f"{k}={_value(call[k])}" for k in ("num_inference_steps", "guidance_scale"))
    rest = ", ".join(f"{k}={_value(v)}" for k, v in call.items() if k not in ("num_inference_steps", "guidance_scale"))
    call_line = f'image = pipe("{WIDGET_PROMPT}", {arguments},\n             {rest}).images[0]'
    if metadata.get("family") in ("sd3", "flux") and steps > 1:  # their pipelines re-noise from the global RNG
        call_line = "torch.manual_seed(0)\n" + call_line
    no_t5 = ", text_encoder_3=None, tokenizer_3=None" if metadata.get("t5") is False else ""
    dtype = "bfloat16" if metadata.get("family") == "sana" else "float16"  # SANA's Gemma and DC-AE need bf16 or fp32
    if metadata.get("format", "pipeline") == "pipeline":
        return [
            "```python",
            "import torch",
            "from diffusers import DiffusionPipeline",
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{where}", torch_dtype=torch.{dtype}{no_t5}).to("cuda")',
            call_line,
            "```",
        ]
    prediction = metadata.get("prediction_type")
    extra = f', prediction_type="{prediction}"' if prediction else ""
    base = metadata.get("pretrained")
    scheduler, options = (
        ("FlowMatchEulerDiscreteScheduler", f"shift=1.0, use_dynamic_shifting=False, stochastic_sampling={steps > 1}")
        if _flow(metadata)
        else ("LCMScheduler", f"clip_sample=False, thresholding=False{extra}")
    )
    file = metadata.get("file")
    if metadata.get("format") == "single-file":
        load = [
            f'pipe = {pipeline_class}.from_single_file("{where}/{file}", config="{base}",\n'
            f'                                  torch_dtype=torch.{dtype}).to("cuda")'
        ]
    else:
        load = [
            f'pipe = {pipeline_class}.from_pretrained("{base}", torch_dtype=torch.{dtype}{no_t5}).to("cuda")',
            f'pipe.load_lora_weights("{where}"' + (f', weight_name="{file}")' if file else ")"),
        ]
    return [
        "```python",
        "import torch",
        f"from diffusers import {scheduler}, {pipeline_class}",
        "",
        load[0],
        f"pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config, {options})",
        *load[1:],
        call_line,
        "```",
    ]


def model_card(
    metadata: Mapping[str, Any],
    pipeline_class: str,
    *,
    config: Mapping[str, Any] | None = None,
    license: str | None = None,
    eval_dir: str | Path | None = None,
    repo_id: str | None = None,
    name: str | None = None,
) -> ModelCard:
    """The card of an exported folder (merged pipeline or LoRA, per ``metadata["format"]``); the
    snippet loads from ``repo_id`` when given.

    The front matter carries the Hub's ``inference`` parameters (:func:`inference_parameters`) and a
    ``widget`` prompt, so the Hub runs the generator as trained, and, with ``eval_dir``, a
    ``model-index`` of the ``distar eval`` scores (:func:`eval_results`) under the model name
    ``repo_id`` or ``name`` (the export folder's)."""
    lora = metadata.get("format") == "lora"
    bases = [b for b in (hub_id(metadata.get("pretrained")), hub_id(metadata.get("generator_init"))) if b]
    model_name = repo_id or name or "distar-generator"
    results = eval_results(eval_dir, [model_name, name or "", metadata.get("checkpoint") or ""]) if eval_dir else []
    data = ModelCardData(
        license=license,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        base_model=list(dict.fromkeys(bases)) or None,
        base_model_relation=("adapter" if lora else "finetune") if bases else None,
        tags=TAGS + (["lora"] if lora else []),
        model_name=model_name if results else None,
        eval_results=results or None,
        inference={"parameters": inference_parameters(metadata)},
        widget=[{"text": WIDGET_PROMPT}],
    )
    step, init = metadata.get("step"), metadata.get("generator_init")
    trained = f"{step} steps" if step is not None else "a distar run"
    what = {
        "lora": "A LoRA of the UNet" + (" in kohya's format" if metadata.get("lora_format") == "kohya" else ""),
        "single-file": f"A `{pipeline_class}` as one checkpoint file in the original key layout",
    }.get(metadata.get("format", "pipeline"), f"A `{pipeline_class}`")
    base_note = (
        f"The LoRA applies to the generator's initial UNet `{init}`: load that UNet into the pipeline first."
        if lora and init
        else ""
    )
    steps = len(_timesteps(metadata))
    network = "transformer" if _flow(metadata) else "UNet"
    scheduler = "An unshifted `FlowMatchEulerDiscreteScheduler`" if _flow(metadata) else "`LCMScheduler`"
    how = (
        [
            f"The generator is the {network} evaluated once on pure noise at the fixed timestep t_init = "
            f"{metadata['t_init']};",
            f"its output, read with the scheduler's prediction type, is the clean latent. {scheduler} does exactly",
            f"that with one step at `{_schedule_argument(metadata)}` and no classifier-free guidance.",
        ]
        if steps == 1
        else [
            f"The generator is the {network} applied {steps} times, at `{_schedule_argument(metadata)}`: each "
            "output, read with the",
            "scheduler's prediction type, is a clean latent, re-noised with fresh noise to the next timestep "
            f"(DMD2's multi-step sampling). {scheduler}",
            f"does exactly that with `num_inference_steps={steps}` and no classifier-free guidance.",
        ]
    )
    body = [
        f"# {'One' if steps == 1 else steps}-step text-to-image generator (Diff-Instruct*)",
        "",
        f"{what} trained with Diff-Instruct* (distar {metadata.get('distar_version')}) for {trained}, with "
        f"reference model `{metadata.get('pretrained')}`"
        + (f", generator initialised from `{init}`" if init else "")
        + f" ({'EMA' if metadata.get('ema') else 'raw'} weights).",
        "",
        *how,
        f"It was trained at {metadata.get('resolution')}×{metadata.get('resolution')} pixels.",
        "",
        *_snippet(metadata, pipeline_class, repo_id or "path/to/this/folder"),
        "",
        *([base_note, ""] if base_note else []),
        "diffusers may warn that the first timestep is not 999; that is expected for a one-step generator.",
        "`distar.json` records t_init, the timesteps, the resolution and the training run this folder was "
        "exported from.",
    ]
    if config:
        body += ["", "## Training", "", *_summary_lines(config, step)]
    if eval_dir is not None:
        body += ["", *_eval_section(eval_dir)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def validate_export(folder: str | Path, *, require_license: bool = False) -> dict[str, Any]:
    """Check an exported folder before it is published; return its ``distar.json``.

    Checks: the weights of its format exist, the card parses and names its licence (when
    ``require_license``), and no value in ``distar.json`` is an absolute path.
    """
    from distar.backends.lora import LORA_WEIGHTS_FILE

    folder = Path(folder)
    meta_file, card_file = folder / METADATA_FILE, folder / "README.md"
    for file in (meta_file, card_file):
        if not file.is_file():
            raise ConfigError(f"{folder}: no {file.name}; not a distar export")
    metadata = json.loads(meta_file.read_text())
    needed = metadata.get("file") or (LORA_WEIGHTS_FILE if metadata.get("format") == "lora" else "model_index.json")
    if not (folder / needed).is_file():
        raise ConfigError(f"{folder}: no {needed}")
    absolute = [k for k, v in metadata.items() if isinstance(v, str) and Path(v).is_absolute()]
    if absolute:
        raise ConfigError(f"{meta_file}: absolute paths in {', '.join(absolute)}")
    card = ModelCard.load(card_file)
    if require_license and not card.data.license:
        raise ConfigError(f"{card_file}: no licence found in the base models' cards; choose one with --license")
    return metadata


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Validate an exported folder and upload it to the hub model repo ``repo_id`` (created if
    missing); returns the commit URL."""
    from huggingface_hub import HfApi

    validate_export(folder, require_license=True)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model")
    return str(getattr(info, "commit_url", info))
