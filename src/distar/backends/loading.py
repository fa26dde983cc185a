"""Loading diffusers components: the reference pipeline's parts and one-step generator inits.

A model is read component by component (``unet/`` or ``transformer/``, ``vae/``, ``text_encoder[_2,_3]/``,
``tokenizer[_2,_3]/``, ``scheduler/``) from a hub id or local folder, so folders without a VAE
(pixel-space models) or without T5 (SD3) load too. Flow transformers (SD3, FLUX, SANA) keep their
own scheduler, whose shift is the training schedule's.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    LCMScheduler,
    SanaPipeline,
    SanaTransformer2DModel,
    SchedulerMixin,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Gemma2Model,
    GemmaTokenizer,
    T5EncoderModel,
    T5TokenizerFast,
)

from distar.backends.config import TINY_MODELS, ModelConfig
from distar.backends.lora import cast_
from distar.backends.weights import key_mismatch
from distar.config import ConfigError
from distar.errors import first_line
from distar.io import random_model, tiny_asset

TextToImagePipeline = (
    StableDiffusionPipeline | StableDiffusionXLPipeline | StableDiffusion3Pipeline | FluxPipeline | SanaPipeline
)

#: The diffusers pipeline class of each ``model.family``.
PIPELINES: dict[str, type[TextToImagePipeline]] = {
    "sd": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sd3": StableDiffusion3Pipeline,
    "flux": FluxPipeline,
    "sana": SanaPipeline,
}

#: The arguments that build a ``StableDiffusionPipeline`` without a safety checker: distar scores
#: images, it never filters them.
NO_SAFETY_CHECKER: dict[str, Any] = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)

#: Names of the frozen text encoders a pipeline may hold.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")

#: Formats of state-dict files accepted by ``generator_init``.
STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def resolve_pretrained(spec: str) -> str:
    """A hub id or local path as given; ``tiny:<name>`` built once into ``$DISTAR_CACHE/tiny/<name>``."""
    if not spec.startswith("tiny:"):
        return spec
    name = spec[5:]
    if name not in TINY_MODELS:
        raise ConfigError(f"unknown tiny model '{name}' (choose from {', '.join(TINY_MODELS)})")
    return str(tiny_asset("pipeline", name=name))


def _model_index(path: str, revision: str | None) -> dict[str, Any]:
    """``model_index.json`` of a pipeline folder or hub repo ({} when there is none)."""
    local = Path(path)
    if local.is_dir():
        file = local / "model_index.json"
        return json.loads(file.read_text()) if file.is_file() else {}
    try:
        return dict(DiffusionPipeline.load_config(path, revision=revision))
    except OSError:
        return {}


def absent_components(folder: str | Path) -> dict[str, None]:
    """``{name: None}`` for every component a pipeline folder records as null (SD3 without T5):
    diffusers loads such a folder only when these are passed to ``from_pretrained``."""
    index = _model_index(str(folder), None)
    return {k: None for k, v in index.items() if isinstance(v, (list, tuple)) and v and v[0] is None}


def _has_component(path: str, name: str, index: Mapping[str, Any]) -> bool:
    if Path(path).is_dir():
        return (Path(path) / name).is_dir()
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and entry[0] is not None


def denoiser_name(pipe: Any) -> str:
    """``"transformer"`` for DiT pipelines (SD3), ``"unet"`` for UNet ones."""
    return "transformer" if getattr(pipe, "transformer", None) is not None else "unet"


def denoiser(pipe: Any) -> ModelMixin:
    """The pipeline's denoising network: its transformer or its UNet."""
    return getattr(pipe, denoiser_name(pipe))


def load_component(cls: Any, cfg: ModelConfig, path: str, subfolder: str, dtype: torch.dtype | None = None) -> Any:
    """``cls.from_pretrained(path, subfolder=...)`` (in ``dtype`` if given), or with ``cfg.random_weights``
    the architecture of its config with random weights, cast to ``dtype``."""
    if cfg.random_weights:
        model = random_model(cls, path, subfolder=subfolder, revision=cfg.revision)
        return model if dtype is None else cast_(model, dtype)
    kwargs = {} if dtype is None else {"dtype": dtype}
    return cls.from_pretrained(path, subfolder=subfolder, revision=cfg.revision, variant=cfg.variant, **kwargs)


def load_pipeline(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> TextToImagePipeline:
    """The reference model as a (CPU) SD, SDXL, SD3, FLUX or SANA pipeline (UNets: with an ``LCMScheduler``).

    The UNet is loaded in float32 (trainable copies are made from it); the VAE and text encoders in
    ``dtype``. ``vae`` is None for pixel-space models. The scheduler keeps the reference's training
    schedule (betas, prediction type; ``cfg.prediction_type`` overrides) and samples in one step.
    With ``cfg.random_weights`` the networks have random weights (:func:`load_component`).
    """
    path = resolve_pretrained(cfg.pretrained)
    index = _model_index(path, cfg.revision)
    if cfg.flow and not _has_component(path, "transformer", index):
        raise ConfigError(f"model.family: '{cfg.family}' needs a transformer/ in '{cfg.pretrained}'")
    if cfg.family == "sd3":
        return _load_sd3_pipeline(cfg, path, index, dtype)
    if cfg.family == "flux":
        return _load_flux_pipeline(cfg, path, dtype)
    if cfg.family == "sana":
        return _load_sana_pipeline(cfg, path, dtype)
    try:
        unet = load_component(UNet2DConditionModel, cfg, path, "unet", torch.float32)
        if (unet.config.addition_embed_type == "text_time") != (cfg.family == "sdxl"):
            raise ConfigError(f"model.family: '{cfg.family}' does not match the UNet of '{cfg.pretrained}'")
        vae = load_component(AutoencoderKL, cfg, path, "vae", dtype) if _has_component(path, "vae", index) else None
        scheduler_config = LCMScheduler.load_config(path, subfolder="scheduler", revision=cfg.revision)

        def text(cls: Any, sub: str) -> Any:
            return cast_(load_component(cls, cfg, path, sub), dtype)

        def tokenizer(sub: str) -> CLIPTokenizer:
            return CLIPTokenizer.from_pretrained(path, subfolder=sub, revision=cfg.revision)

        if cfg.family == "sdxl":
            if vae is None:
                raise ConfigError(f"model.pretrained: '{cfg.pretrained}' has no vae/, needed by family 'sdxl'")
            parts = dict(
                text_encoder=text(CLIPTextModel, "text_encoder"),
                text_encoder_2=text(CLIPTextModelWithProjection, "text_encoder_2"),
                tokenizer=tokenizer("tokenizer"),
                tokenizer_2=tokenizer("tokenizer_2"),
            )
        else:
            parts = dict(text_encoder=text(CLIPTextModel, "text_encoder"), tokenizer=tokenizer("tokenizer"))
    except OSError as err:
        raise ConfigError(f"model.pretrained: cannot load '{cfg.pretrained}': {first_line(err)}") from None
    if vae is not None and dtype == torch.float16 and vae.config.force_upcast:
        cast_(vae, torch.float32)  # SD/SDXL VAEs overflow in float16
    scheduler = one_step_scheduler(scheduler_config, cfg.prediction_type)
    if cfg.family == "sdxl":
        zeros = index.get("force_zeros_for_empty_prompt", True)
        return StableDiffusionXLPipeline(
            vae=vae, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=zeros, **parts
        )
    return StableDiffusionPipeline(vae=vae, unet=unet, scheduler=scheduler, **NO_SAFETY_CHECKER, **parts)


def _load_transformer_pipeline(
    cfg: ModelConfig,
    path: str,
    dtype: torch.dtype,
    *,
    transformer: type[ModelMixin],
    vae: type[ModelMixin],
    scheduler: type[SchedulerMixin],
    text: Sequence[tuple[Any, Any]],
) -> Any:
    """The family's pipeline (:data:`PIPELINES`) from its components, each read from its subfolder (the
    networks with :func:`load_component`): the transformer in float32 (trainable copies are made from
    it), the other networks in ``dtype``, tokenizers and schedulers as saved. ``text`` lists (encoder,
    tokenizer) classes in the pipeline's order (``text_encoder``/``tokenizer``, then ``…_2``, ``…_3``);
    (None, None) for an absent pair."""
    components = dict(transformer=transformer, vae=vae, scheduler=scheduler)
    for i, (encoder, tokenizer) in enumerate(text):
        suffix = f"_{i + 1}" if i else ""
        components.update({f"text_encoder{suffix}": encoder, f"tokenizer{suffix}": tokenizer})

    def load(name: str, cls: Any) -> Any:
        if cls is None:
            return None
        if not issubclass(cls, torch.nn.Module):
            return cls.from_pretrained(path, subfolder=name, revision=cfg.revision)
        return load_component(cls, cfg, path, name, torch.float32 if name == "transformer" else dtype)

    try:
        return PIPELINES[cfg.family](**{name: load(name, cls) for name, cls in components.items()})
    except OSError as err:
        raise ConfigError(f"model.pretrained: cannot load '{cfg.pretrained}': {first_line(err)}") from None


def _load_sd3_pipeline(
    cfg: ModelConfig, path: str, index: Mapping[str, Any], dtype: torch.dtype
) -> StableDiffusion3Pipeline:
    """SD3/SD3.5: CLIP-L, CLIP-G and (``cfg.t5`` and present) T5; the reference's own
    ``FlowMatchEulerDiscreteScheduler`` (its shift is the training schedule's)."""
    t5 = cfg.t5 and _has_component(path, "text_encoder_3", index)
    clip = (CLIPTextModelWithProjection, CLIPTokenizer)
    text = [clip, clip, (T5EncoderModel, T5TokenizerFast) if t5 else (None, None)]
    return _load_transformer_pipeline(
        cfg, path, dtype, transformer=SD3Transformer2DModel, vae=AutoencoderKL,
        scheduler=FlowMatchEulerDiscreteScheduler, text=text,
    )


def _load_flux_pipeline(cfg: ModelConfig, path: str, dtype: torch.dtype) -> FluxPipeline:
    """FLUX.1: CLIP (pooled) and T5; the reference's own (dynamically shifted) ``FlowMatchEulerDiscreteScheduler``."""
    text = [(CLIPTextModel, CLIPTokenizer), (T5EncoderModel, T5TokenizerFast)]
    return _load_transformer_pipeline(
        cfg, path, dtype, transformer=FluxTransformer2DModel, vae=AutoencoderKL,
        scheduler=FlowMatchEulerDiscreteScheduler, text=text,
    )


def _load_sana_pipeline(cfg: ModelConfig, path: str, dtype: torch.dtype) -> SanaPipeline:
    """SANA: Gemma-2 (``Gemma2Model``) and its tokenizer, the DC-AE; the reference's own flow scheduler
    (:func:`_flow_scheduler_class`)."""
    scheduler = _flow_scheduler_class(cfg, path)
    return _load_transformer_pipeline(
        cfg, path, dtype, transformer=SanaTransformer2DModel, vae=AutoencoderDC,
        scheduler=scheduler, text=[(Gemma2Model, GemmaTokenizer)],
    )


#: Schedulers a flow model may ship with: rectified-flow Euler (SD3, FLUX) and flow-sigma DPM-Solver (SANA).
FLOW_SCHEDULERS = {cls.__name__: cls for cls in (FlowMatchEulerDiscreteScheduler, DPMSolverMultistepScheduler)}


def _flow_scheduler_class(cfg: ModelConfig, path: str) -> type[SchedulerMixin]:
    """The class named by the model's ``scheduler/`` config, which must be one of :data:`FLOW_SCHEDULERS`
    (a DPM-Solver with ``use_flow_sigmas``): its shift is the training schedule's."""
    try:
        config = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler", revision=cfg.revision)
    except OSError as err:
        raise ConfigError(f"model.pretrained: cannot load '{cfg.pretrained}': {first_line(err)}") from None
    name = config.get("_class_name")
    if name not in FLOW_SCHEDULERS or name == "DPMSolverMultistepScheduler" and not config.get("use_flow_sigmas"):
        raise ConfigError(f"model.pretrained: '{cfg.pretrained}' has a {name} that is not a flow-matching scheduler")
    return FLOW_SCHEDULERS[name]


def _accepted(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a scheduler config that ``cls`` takes (others, e.g. a DPM-Solver's, are dropped)."""
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in accepted}


def one_step_flow_scheduler(
    scheduler_config: Mapping[str, Any], stochastic: bool = False
) -> FlowMatchEulerDiscreteScheduler:
    """A ``FlowMatchEulerDiscreteScheduler`` (from any flow scheduler's config) that uses ``sigmas`` as
    given (no shift): with ``sigmas=[t_init/1000]`` one step returns x_t − σ û, the generator's x0 (§1).
    ``stochastic`` (few-step generators): each step re-noises that x0 to the next σ with fresh noise, as
    DMD2 does."""
    return FlowMatchEulerDiscreteScheduler.from_config(
        _accepted(FlowMatchEulerDiscreteScheduler, scheduler_config),
        shift=1.0,
        use_dynamic_shifting=False,
        stochastic_sampling=stochastic,
    )


def one_step_scheduler(scheduler_config: Mapping[str, Any], prediction_type: str | None = None) -> LCMScheduler:
    """An ``LCMScheduler`` on the reference's training schedule for ``timesteps=[t_init]`` sampling.

    With one step, LCM returns c_skip·x_t + c_out·x̂0 with c_skip ≈ 1.6e-8 at t = 399, i.e. the
    generator's x0 (Eq. 2.1 conversion of the UNet output) up to float32 rounding; clipping and
    thresholding are off so nothing else touches it.
    """
    config = _accepted(LCMScheduler, scheduler_config)  # drop e.g. Euler-only keys
    config.update(clip_sample=False, thresholding=False)
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    return LCMScheduler.from_config(config)


def read_state_dict(file: str | Path) -> dict[str, torch.Tensor]:
    """A flat tensor state dict from ``.safetensors`` or a torch pickle (``weights_only=True``)."""
    file = Path(file)
    if file.suffix == ".safetensors":
        return load_file(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a refused pickle raises one of many types; its message matters
        raise ConfigError(f"{file}: not a plain tensor checkpoint ({first_line(err)[:200]})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{file}: expected a flat state dict of tensors")
    return dict(state)


def load_denoiser_init(
    spec: str,
    unet_config: Mapping[str, Any],
    revision: str | None = None,
    cls: type[ModelMixin] = UNet2DConditionModel,
) -> ModelMixin:
    """A float32 denoiser of class ``cls`` (default: a UNet) with weights from ``spec`` (see
    ``ModelConfig.generator_init``).

    State-dict files (e.g. DMD2's ``dmd2_sdxl_1step_unet_fp16.bin``, a diffusers-keyed fp16 state
    dict) are loaded strictly into a network built from ``unet_config`` (the reference's).
    """
    local = Path(spec)
    folder = "transformer" if cls is not UNet2DConditionModel else "unet"
    try:
        if local.is_dir():
            sub = folder if (local / folder / "config.json").is_file() else None
            return cls.from_pretrained(local, subfolder=sub, dtype=torch.float32)
        if not local.is_file():
            parts = spec.split("/")
            if len(parts) < 2 or local.suffix in STATE_DICT_SUFFIXES and len(parts) < 3:
                raise ConfigError(f"model.generator_init: '{spec}' is not a file, folder or hub id")
            if len(parts) == 2:  # a hub repo holding a diffusers UNet (at its root or in unet/)
                from huggingface_hub import file_exists

                sub = folder if file_exists(spec, f"{folder}/config.json", revision=revision) else None
                return cls.from_pretrained(spec, subfolder=sub, revision=revision, dtype=torch.float32)
            from huggingface_hub import hf_hub_download

            local = Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision))
    except OSError as err:
        raise ConfigError(f"model.generator_init: cannot load '{spec}': {first_line(err)}") from None
    unet = cls.from_config(unet_config)
    state = read_state_dict(local)
    missing, unexpected = key_mismatch(unet.state_dict(), state)
    if missing or unexpected:
        raise ConfigError(
            f"model.generator_init: '{spec}' does not fit the reference UNet "
            f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    unet.load_state_dict(state)
    return unet

