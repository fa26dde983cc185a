"""Training checkpoint → standard diffusers one/few-step pipeline (and sampling from either).

An exported folder is a plain ``StableDiffusionPipeline``/``StableDiffusionXLPipeline``/
``StableDiffusion3Pipeline``/``FluxPipeline``/``SanaPipeline``: the generator UNet or transformer (EMA
weights by default, LoRA merged, ``sample_size`` = the training resolution), the reference's VAE, text
encoders and tokenizers, and the generator's scheduler (an ``LCMScheduler``; for flow transformers an
unshifted ``FlowMatchEulerDiscreteScheduler``, called with ``sigmas=[t/1000, ...]`` instead of
``timesteps``, stochastic for several steps); ``distar.json`` records ``t_init``,
``num_inference_steps``, ``timesteps``, the resolution (and for flow transformers the text-token count), and
``README.md`` is a Hub model card (:mod:`distar.export.card`). With ``lora`` the folder holds the generator's
LoRA in diffusers' format instead. Then

    DiffusionPipeline.from_pretrained(DIR)(prompt, num_inference_steps=k, guidance_scale=0, timesteps=[...])

evaluates the generator k times, re-noising its x0 between steps, and decodes the last x0
(docs/math.md §2; one step: the network once on z at t_init).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_args

import torch
from torch import Tensor

from distar import __version__
from distar.backends.config import ModelConfig
from distar.export.card import METADATA_FILE, generator_call
from distar.config import ConfigError, from_dict, read_config_file
from distar.errors import first_line
from distar.train.checkpoint import (
    CONFIG_FILE,
    GENERATOR_EMA_FILE,
    GENERATOR_FILE,
    CheckpointError,
    all_finite,
    list_checkpoints,
    read_trainer_state,
    replace_dir,
    resolve_checkpoint,
)

#: What ``distar export --format`` writes: a diffusers folder (pipeline or LoRA), one original-layout
#: checkpoint file (SD/SDXL), or a kohya LoRA file.
ExportFormat = Literal["diffusers", "single-file", "kohya"]


def find_checkpoint(path: str | Path) -> Path:
    """A ``checkpoint-<step>/`` folder as given, or the newest one inside a run folder; verified."""
    path = Path(path)
    if (path / GENERATOR_FILE).is_file():
        return resolve_checkpoint(str(path), path.parent)
    if list_checkpoints(path):
        return resolve_checkpoint("latest", path)
    raise FileNotFoundError(f"{path}: neither a training checkpoint (no {GENERATOR_FILE}) nor a run folder with one")


def checkpoint_config(checkpoint_dir: str | Path) -> dict[str, Any]:
    """A checkpoint's ``config.yaml`` as a mapping; a one-line error naming the file when it is not one."""
    file = Path(checkpoint_dir) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: no {CONFIG_FILE}")
    return read_config_file(file)


def checkpoint_model_config(checkpoint_dir: str | Path) -> ModelConfig:
    """The ``model`` section of a checkpoint's ``config.yaml``; a :class:`CheckpointError` naming the file
    when it names no usable model."""
    file = Path(checkpoint_dir) / CONFIG_FILE
    model = checkpoint_config(checkpoint_dir).get("model")
    if not model:
        raise CheckpointError(f"{file}: no `model` section (not a run on a diffusers backend)")
    if not isinstance(model, dict):
        raise CheckpointError(f"{file}: `model` is not a mapping")
    try:
        return from_dict(ModelConfig, model, prefix="model.")
    except ConfigError as err:
        raise CheckpointError(f"{file}: {err}") from None


def _generator_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's generator weights file, all finite; otherwise a
    :class:`CheckpointError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(file)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({first_line(err)})") from None
    if not all_finite(state.values()):
        raise CheckpointError(f"{file}: holds non-finite weights")
    return state


def _generator_from_checkpoint(
    ckpt: Path, use_ema: bool, dtype: torch.dtype
) -> tuple[Any, torch.nn.Module, ModelConfig]:
    """(reference pipeline, generator UNet with the checkpoint's weights, model config), all on the CPU.

    What the checkpoint's files cannot give (an unreadable file, a model that cannot be built, weights
    that do not fit it, timesteps past the reference's schedule) is a :class:`CheckpointError` naming the file."""
    from distar.backends.build import build_generator
    from distar.backends.loading import denoiser, load_pipeline
    from distar.backends.weights import load_trainable_state_dict

    cfg = checkpoint_model_config(ckpt)
    weights = ckpt / GENERATOR_EMA_FILE if use_ema and (ckpt / GENERATOR_EMA_FILE).is_file() else ckpt / GENERATOR_FILE
    state = _generator_weights(weights)
    try:
        pipe = load_pipeline(cfg, dtype)
        generator = build_generator(cfg, denoiser(pipe), dtype)
    except ConfigError as err:
        raise CheckpointError(f"{ckpt / CONFIG_FILE}: {err}") from None
    horizon = None if cfg.flow else pipe.scheduler.config.num_train_timesteps
    if horizon is not None and max(cfg.generator_timesteps) >= horizon:
        raise CheckpointError(
            f"{ckpt / CONFIG_FILE}: model timesteps {cfg.generator_timesteps} go past the reference's "
            f"{horizon} training timesteps"
        )
    try:
        load_trainable_state_dict(generator, state, source=str(weights))
    except ValueError as err:
        raise CheckpointError(f"{err} (the model {CONFIG_FILE} describes)") from None
    return pipe, generator, cfg


def training_resolution(cfg: ModelConfig, pipe: Any) -> int:
    """The image side the generator was trained at (``model.resolution`` or the reference's default)."""
    from distar.backends.loading import denoiser

    scale = pipe.vae_scale_factor if pipe.vae is not None else 1
    return cfg.resolution or denoiser(pipe).config.sample_size * scale


def pipeline_from_checkpoint(
    checkpoint_dir: str | Path, use_ema: bool = True, dtype: torch.dtype = torch.float32
) -> Any:
    """The checkpoint's generator as a CPU diffusers pipeline with its k-step scheduler: an
    ``LCMScheduler`` (UNets, ``timesteps=[...]``) or an unshifted ``FlowMatchEulerDiscreteScheduler``
    (flow transformers, ``sigmas=[t/1000, ...]``; stochastic, i.e. re-noising, for k > 1).

    ``checkpoint_dir`` is a ``checkpoint-<step>/`` folder or a run folder (latest checkpoint). The
    generator weights (``generator_ema.safetensors`` when ``use_ema`` and present, else
    ``generator.safetensors``) must hold exactly the trainable keys of the configured generator. For
    pixel-space models ``vae`` is None: sample with :func:`generator_images`. All weights are loaded in
    ``dtype`` (float32 by default, whatever the training ``model.dtype``), and LoRA is merged in it.
    The denoiser's ``sample_size`` is the training resolution, so the pipeline's default size is it.
    """
    from distar.backends.loading import denoiser_name, one_step_flow_scheduler
    from distar.backends.lora import cast_, merged_denoiser

    pipe, generator, cfg = _generator_from_checkpoint(find_checkpoint(checkpoint_dir), use_ema, dtype)
    resolution = training_resolution(cfg, pipe)
    unet = cast_(merged_denoiser(generator), dtype).eval()
    unet.register_to_config(sample_size=resolution // (pipe.vae_scale_factor if pipe.vae is not None else 1))
    pipe.register_modules(**{denoiser_name(pipe): unet})
    if cfg.flow:
        pipe.register_modules(scheduler=one_step_flow_scheduler(pipe.scheduler.config, stochastic=cfg.steps > 1))
    return pipe


def export_metadata(checkpoint_dir: str | Path, use_ema: bool = True) -> dict[str, Any]:
    """What ``distar.json`` records besides format and resolution: t_init and where the weights came
    from (model names without local paths)."""
    from distar.export.card import portable_name

    ckpt = find_checkpoint(checkpoint_dir)
    cfg = checkpoint_model_config(ckpt)
    state = read_trainer_state(ckpt)
    return {
        "format": "pipeline",
        "t_init": cfg.t_init,
        "num_inference_steps": cfg.steps,
        "timesteps": cfg.generator_timesteps,
        "family": cfg.family,
        "prediction_type": cfg.prediction_type,
        **({"t5": cfg.t5} if cfg.family == "sd3" else {}),
        **({"guidance": cfg.guidance} if cfg.family == "flux" else {}),
        **({"max_sequence_length": cfg.max_sequence_length} if cfg.flow else {}),
        "pretrained": portable_name(cfg.pretrained),
        "generator_init": portable_name(cfg.generator_init),
        "checkpoint": ckpt.name,
        "step": state["step"],
        "ema": bool(use_ema and (ckpt / GENERATOR_EMA_FILE).is_file()),
        "distar_version": __version__,
    }


def export_checkpoint(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    use_ema: bool = True,
    overwrite: bool = False,
    dtype: torch.dtype = torch.float32,
    lora: bool = False,
    format: ExportFormat = "diffusers",
    license: str | None = None,
    eval_dir: str | Path | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write the checkpoint's generator (weights in ``dtype``) with a model card and ``distar.json``;
    return the folder.

    By default the folder is a complete diffusers pipeline with the LoRA (if any) merged; with
    ``lora`` it holds only the generator's LoRA as diffusers' ``pytorch_lora_weights.safetensors``,
    for ``pipe.load_lora_weights`` on the reference pipeline. ``format="single-file"`` (SD/SDXL, no
    ``lora``) writes the merged pipeline as ``<folder name>.safetensors`` in the original key layout
    (:mod:`distar.export.single_file`) with a ComfyUI workflow; ``format="kohya"`` (with ``lora``)
    writes the LoRA as ``<folder name>.safetensors`` in kohya's format (:mod:`distar.export.kohya`).
    The single file's name is recorded as ``file`` in ``distar.json``. ``license`` overrides the licence read
    from the base models' cards; ``eval_dir`` (a ``distar eval --out`` folder) adds its tables to the
    card; ``repo_id`` is where the card's snippet loads from. The folder is written under a temporary name and renamed when complete.
    """
    from distar.backends.loading import denoiser
    from distar.backends.lora import lora_layers, save_diffusers_lora
    from distar.export.card import model_card, resolve_license
    from distar.export.kohya import save_kohya_lora
    from distar.export.single_file import architecture_id, write_single_file

    out = Path(out_dir)
    if format not in get_args(ExportFormat):
        raise ConfigError(f"--format: expected one of {', '.join(get_args(ExportFormat))}, got '{format}'")
    if format == "kohya" and not lora:
        raise ConfigError("--format kohya is a LoRA format: add --lora")
    if format == "single-file" and lora:
        raise ConfigError("--format single-file writes the merged generator: drop --lora")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
    ckpt = find_checkpoint(checkpoint_dir)
    config, cfg = checkpoint_config(ckpt), checkpoint_model_config(ckpt)
    license = resolve_license(config["model"], license)
    if lora:
        pipe, generator, _ = _generator_from_checkpoint(ckpt, use_ema, torch.float32)
        if not lora_layers(generator):
            raise ConfigError("--lora: the generator has no LoRA (model.generator_lora_rank is 0)")
        state = {k: v.to(dtype) for k, v in generator.state_dict().items() if "lora_" in k}
    else:
        pipe = pipeline_from_checkpoint(ckpt, use_ema, dtype)
        if pipe.vae is None:
            raise ConfigError("pixel-space models (no VAE) have no standard diffusers pipeline to export to")
    written = state if lora else denoiser(pipe).state_dict()
    if not all_finite(written.values()):
        raise ConfigError(f"{ckpt}: the generator's weights are not finite in {str(dtype).removeprefix('torch.')}"
                          " (they overflow it): export in float32")
    metadata = {**export_metadata(ckpt, use_ema), "format": "lora" if lora else "pipeline"}
    metadata["resolution"] = training_resolution(cfg, pipe)
    if format != "diffusers":
        metadata.update(format="lora" if lora else "single-file", file=f"{out.name}.safetensors")
        metadata |= {"lora_format": "kohya"} if lora else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if format == "kohya":
            save_kohya_lora(
                generator, tmp / metadata["file"], state, architecture=architecture_id(pipe), dtype=dtype, metadata=metadata
            )
        elif lora:
            save_diffusers_lora(generator, tmp, state=state)
        elif format == "single-file":
            write_single_file(pipe, tmp, metadata)
        else:
            pipe.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        card = model_card(
            metadata, type(pipe).__name__, config=config, license=license, eval_dir=eval_dir, repo_id=repo_id,
            name=out.name,
        )
        card.save(tmp / "README.md")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_generator(
    path: str | Path, use_ema: bool = True, dtype: torch.dtype = torch.float32
) -> tuple[Any, dict[str, Any]]:
    """(CPU pipeline in ``dtype``, :func:`generator_call` keyword arguments) from an exported folder
    (``distar.json``) or a training checkpoint/run folder."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        from diffusers import DiffusionPipeline

        from distar.backends.loading import absent_components

        meta_file = path / METADATA_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path}: no {METADATA_FILE}; not a distar export")
        pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype, **absent_components(path))
        return pipe, generator_call(json.loads(meta_file.read_text()))
    if (path / METADATA_FILE).is_file():  # a LoRA or single-file export: weights without their pipeline
        kind = json.loads((path / METADATA_FILE).read_text()).get("format")
        raise ConfigError(
            f"{path}: a {kind} export holds no diffusers pipeline; generate from a plain `distar export` "
            "folder or from the checkpoint"
        )
    ckpt = find_checkpoint(path)
    pipe = pipeline_from_checkpoint(ckpt, use_ema, dtype)
    metadata = {**export_metadata(ckpt, use_ema), "resolution": training_resolution(checkpoint_model_config(ckpt), pipe)}
    return pipe, generator_call(metadata)


@torch.no_grad()
def generator_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    call: Mapping[str, Any],
    height: int | None = None,
    width: int | None = None,
) -> Tensor:
    """Images (B, 3, H, W) in [0, 1]: ``pipe`` run with ``call`` (:func:`generator_call`), one network
    evaluation per step; z from a CPU generator per seed.

    Re-noising between steps draws from the same generators (LCM; SANA, whose pipeline passes them to
    the scheduler); the SD3 and FLUX pipelines draw it from torch's global RNG, which is seeded with the
    first seed here (and restored after).
    Pixel-space pipelines (``vae`` None) return their latents, which are the image in [-1, 1]; their
    size argument counts in units of the pipeline's nominal ``vae_scale_factor``.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    call = dict(call)
    pixel = pipe.vae is None
    if pixel:
        side = pipe.unet.config.sample_size
        height, width = ((s or side) * pipe.vae_scale_factor for s in (height, width))
    call.update({k: v for k, v in dict(height=height, width=width).items() if v is not None})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seeds[0]))
        out = pipe(
            prompt=list(prompts),
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            output_type="latent" if pixel else "pt",
            **call,
        ).images
    return ((out + 1) / 2).clamp(0, 1) if pixel else out
