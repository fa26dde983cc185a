"""LoRA (peft) on diffusers UNets and transformers, and the shared layout: the assistant as an adapter on the reference.

In the shared layout one UNet holds the reference's frozen weights plus the assistant's adapter:
adapters off gives s_ref, adapters on gives s_ψ (docs/math.md §2). Toggling must be visible to
gradient checkpointing, whose backward re-runs a block's forward: :func:`checkpoint_keeping_adapter_state`
re-runs it in the adapter state of the original forward, not the state at backward time.

A generator LoRA leaves distar as diffusers' own LoRA file (:func:`save_diffusers_lora`): peft-style
``unet.<module>.lora_A.weight`` keys with the adapter's rank and alpha in the safetensors metadata, which
``pipe.load_lora_weights`` loads layer for layer. (diffusers' ``convert_state_dict_to_diffusers`` is not
used: in diffusers 0.42 it renames only the attention projections to the old ``lora.down`` names, and
the loader then drops those layers from the mixed-format file without an error.)
"""

from __future__ import annotations

import copy
import weakref
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from accelerate.utils import extract_model_from_parallel
from diffusers import StableDiffusion3Pipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from torch import Tensor, nn

from distar.backends.config import DEFAULT_LORA_TARGETS
from distar.config import ConfigError

#: File name diffusers' ``load_lora_weights`` looks for in a folder.
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
#: The EMA generator's LoRA in checkpoints: ``load_lora_weights(folder, weight_name=LORA_EMA_WEIGHTS_FILE)``.
LORA_EMA_WEIGHTS_FILE = "pytorch_lora_weights_ema.safetensors"


def add_lora(denoiser: ModelMixin, rank: int, alpha: float | None, target_modules: list[str]) -> None:
    """Inject a trainable float32 LoRA adapter (B = 0 at start: output unchanged); freeze the rest.

    Raises a one-line :class:`~distar.config.ConfigError` when no target names a module of ``denoiser``, or
    when a list other than the default (which spans the UNet and transformer families) names one that
    matches nothing."""
    names = [name for name, _ in denoiser.named_modules()]

    def unmatched(targets: list[str]) -> list[str]:
        return [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]

    missing = unmatched(target_modules)
    if len(missing) == len(target_modules) or (missing and list(target_modules) != DEFAULT_LORA_TARGETS):
        usable = [t for t in DEFAULT_LORA_TARGETS if t not in unmatched(DEFAULT_LORA_TARGETS)]
        raise ConfigError(
            f"model.lora_target_modules: {', '.join(map(repr, missing[:5]))} match no module of the "
            f"{type(denoiser).__name__} (it has e.g. {', '.join(usable[:8])})"
        )
    denoiser.requires_grad_(False)
    denoiser.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=target_modules, init_lora_weights=True)
    )
    cast_training_params(denoiser, dtype=torch.float32)
    _ADAPTER_LAYERS.clear()


def cast_(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast a module's floating weights in place (plain ``nn.Module.to``: diffusers' override warns
    about float32-kept modules even when a model declares none)."""
    return nn.Module.to(module, dtype=dtype)


def lora_layers(module: nn.Module) -> list[BaseTunerLayer]:
    """The peft adapter layers inside ``module``."""
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


#: module -> its adapter layers and their parameters, walked once: adapter switches and checkpointed
#: blocks run many times per step, and a UNet has thousands of modules. :func:`add_lora` resets it.
_ADAPTER_LAYERS: weakref.WeakKeyDictionary[nn.Module, list[tuple[BaseTunerLayer, list[nn.Parameter]]]] = (
    weakref.WeakKeyDictionary()
)


def _adapter_layers(module: nn.Module) -> list[tuple[BaseTunerLayer, list[nn.Parameter]]]:
    found = _ADAPTER_LAYERS.get(module)
    if found is None:
        found = _ADAPTER_LAYERS[module] = [(layer, list(layer.parameters())) for layer in lora_layers(module)]
    return found


@contextmanager
def adapter_state(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Enable or disable every adapter inside ``module`` for the block; restore states and requires_grad after.

    Only layers not already in that state are switched (peft's switch also sets requires_grad)."""
    switched = [(layer, params) for layer, params in _adapter_layers(module) if layer.disable_adapters == enabled]
    saved = [(layer, [p.requires_grad for p in params]) for layer, params in switched]
    for layer, _ in switched:
        layer.enable_adapters(enabled)
    try:
        yield
    finally:
        for (layer, params), (_, grads) in zip(switched, saved):
            layer.enable_adapters(not enabled)
            for p, requires_grad in zip(params, grads):
                p.requires_grad_(requires_grad)


def adapters_disabled(module: nn.Module) -> Any:
    """Run the base weights only (the reference, in the shared layout)."""
    return adapter_state(module, enabled=False)


def checkpoint_keeping_adapter_state(block: nn.Module, *args: Any) -> Any:
    """Gradient checkpointing for diffusers blocks that recomputes in the forward's adapter state."""
    layers = _adapter_layers(block)
    recompute = (
        (lambda: (nullcontext(), adapter_state(block, enabled=not layers[0][0].disable_adapters)))
        if layers
        else (lambda: (nullcontext(), nullcontext()))
    )
    return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False, context_fn=recompute)


def merged_denoiser(denoiser: nn.Module) -> ModelMixin:
    """A plain copy of a (possibly wrapped, possibly LoRA-carrying) UNet or transformer with adapters merged in."""
    merged = copy.deepcopy(extract_model_from_parallel(denoiser))
    if lora_layers(merged):
        merged.fuse_lora()
        merged.unload_lora()
    merged.disable_gradient_checkpointing()
    return merged


def diffusers_lora_state_dict(denoiser: nn.Module, state: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The UNet's LoRA weights under diffusers' keys (``<module>.lora_A.weight``: no adapter name; the file
    adds the ``unet.`` or ``transformer.`` prefix).

    ``state`` (default: the UNet's own) maps the UNet's parameter names to values, e.g. EMA weights.
    """
    inner = extract_model_from_parallel(denoiser)
    weights = get_peft_model_state_dict(inner, state_dict=None if state is None else dict(state))
    return {k: v.detach().contiguous().cpu() for k, v in weights.items()}


def save_diffusers_lora(
    denoiser: nn.Module, folder: str | Path, state: Mapping[str, Tensor] | None = None, weight_name: str = LORA_WEIGHTS_FILE
) -> Path:
    """Write the UNet's adapter as a diffusers LoRA file that ``pipe.load_lora_weights(folder)`` reads;
    returns the file. ``state`` as in :func:`diffusers_lora_state_dict`."""
    inner = extract_model_from_parallel(denoiser)
    if not lora_layers(inner):
        raise ValueError("the UNet has no LoRA adapter to save")
    weights = diffusers_lora_state_dict(inner, state)
    metadata = inner.peft_config["default"].to_dict()
    if isinstance(inner, UNet2DConditionModel):
        # SD and SDXL pipelines write UNet LoRA files identically; the SDXL class accepts both.
        StableDiffusionXLPipeline.save_lora_weights(
            folder, unet_lora_layers=weights, weight_name=weight_name, unet_lora_adapter_metadata=metadata
        )
    else:
        StableDiffusion3Pipeline.save_lora_weights(
            folder, transformer_lora_layers=weights, weight_name=weight_name, transformer_lora_adapter_metadata=metadata
        )
    return Path(folder) / weight_name


def save_checkpoint_lora(
    denoiser: nn.Module, folder: str | Path, weights: Mapping[str, Tensor], ema_weights: Mapping[str, Tensor] | None
) -> None:
    """Next to a checkpoint's own files, the generator's LoRA (raw and EMA) in diffusers' format;
    nothing for a UNet without adapters."""
    if not lora_layers(extract_model_from_parallel(denoiser)):
        return
    save_diffusers_lora(denoiser, folder, state=weights)
    if ema_weights is not None:
        save_diffusers_lora(denoiser, folder, state=ema_weights, weight_name=LORA_EMA_WEIGHTS_FILE)
