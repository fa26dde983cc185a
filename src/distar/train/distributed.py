"""FSDP2 for Algorithm 1 (``loop.fsdp``): the generator and the assistant sharded with ``fully_shard``.

accelerate's FSDP2 takes one model per ``prepare`` call, and Algorithm 1 trains two networks with
separate optimisers, the generator's loss running through the assistant (Theorem 3.1). So distar
shards them itself, on the process group accelerate sets up for a multi-process launch (``torchrun``
or ``accelerate launch --multi_gpu``; NCCL on GPUs, gloo on CPUs: one code path):

- each outermost block of a network (a module whose class name contains ``Block``: a UNet's down, mid
  and up blocks, a transformer's transformer blocks) is one FSDP unit, then the network's root holds
  the rest. Every parameter of both networks becomes a DTensor sharded on its first dimension, so
  each process keeps about 1/N of the weights, of their gradients and of the AdamW states; frozen
  weights inside them (a LoRA generator's base, the reference in the shared-LoRA layout) are sharded
  too. A separate frozen reference stays replicated (it has no gradients or optimiser states).
- each unit gathers its weights for its forward and backward and reduce-scatters their gradients (the
  mean over processes) into the shards' ``.grad``, so accelerate's DTensor-aware ``clip_grad_norm_``
  clips, and reports, the global norm. A backward restricted with ``inputs=`` must name the gathered
  (unsharded) parameters, which are the ones in the autograd graph: naming the sharded ones computes
  no gradient at all (:func:`backward_inputs`).
- checkpoints keep their single-process files: the trainer writes the trainable weights gathered
  (:func:`full_tensors`) and loads them back into the shards (:func:`shard_like`); the optimiser
  states are gathered to the main process as full state dicts (``torch.distributed.checkpoint``) and
  written as ``<network>_optimizer.bin`` (:func:`keep_optimizer_states`).
- the EMA keeps the shadow of each process's shards.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import torch
from accelerate import Accelerator
from accelerate.utils import parse_flag_from_env
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from distar.config import ConfigError
from distar.train.checkpoint import CheckpointError
from distar.train.config import TrainConfig

logger = logging.getLogger(__name__)

#: How the optimiser state of network ``name`` is called in a checkpoint.
OPTIMIZER_FILE = "{name}_optimizer.bin"


def check_launch(config: TrainConfig) -> None:
    """Refuse what the sharded run cannot do, before the Accelerator is made: one-line ConfigErrors."""
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        raise ConfigError(
            "accelerate's FSDP (--use_fsdp) prepares one model per call and distar trains two: launch with torchrun "
            "or accelerate launch --multi_gpu and set loop.fsdp=true (distar shards them with FSDP2 itself)"
        )
    precision = config.loop.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION")
    if config.loop.fsdp and precision == "fp16":
        raise ConfigError("loop.fsdp: fp16 loss scaling is not supported on sharded gradients; use bf16")


def uses_fsdp(config: TrainConfig, accelerator: Accelerator, *, monitored: bool) -> bool:
    """Whether this run shards its networks: ``loop.fsdp`` with more than one process.

    With the held-out monitor on (``monitored``), its reference drift is refused in the shared-LoRA
    layout (one-line ConfigError): the main process makes those images alone, and there the reference
    is the sharded assistant, whose every forward needs all processes."""
    if not (config.loop.fsdp and accelerator.num_processes > 1):
        return False
    model = config.model
    shared = model is not None and model.assistant_lora_rank > 0 and model.assistant_lora_shared
    if shared and monitored and config.monitor.drift_steps:
        raise ConfigError(
            "monitor.drift_steps: under loop.fsdp the shared-LoRA reference is sharded, and the drift images are "
            "made by one process; set monitor.drift_steps=0 or model.assistant_lora_shared=false"
        )
    return True


def blocks(module: nn.Module) -> list[nn.Module]:
    """The outermost submodules of ``module`` whose class name contains ``Block``, in module order."""
    found: list[nn.Module] = []

    def visit(parent: nn.Module) -> None:
        for child in parent.children():
            if "Block" in type(child).__name__:
                found.append(child)
            else:
                visit(child)

    visit(module)
    return found


def shard(module: nn.Module, names: list[str], accelerator: Accelerator) -> list[nn.Parameter]:
    """``fully_shard`` each block of ``module`` (see :func:`blocks`), then ``module`` itself, in place,
    over all processes on the accelerator's device type. Returns its parameters ``names`` (the
    trainable ones), now sharded DTensors."""
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    units = blocks(module)
    for block in units:
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    params = dict(module.named_parameters())
    trainable = [params[name] for name in names]
    logger.info(
        "FSDP: %s sharded in %d blocks + root; this process holds %d of its %d trainable bytes",
        type(module).__name__, len(units), local_bytes(trainable), sum(p.numel() * p.element_size() for p in trainable),
    )
    return trainable


def backward_inputs(module: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of ``module`` as its forward uses them, for ``backward(inputs=...)``:
    under FSDP the unsharded parameters its units gather (FSDP2 keeps one such tensor per parameter for
    the whole run and reduce-scatters its gradient into the shard's ``.grad``), else its parameters."""
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    params = [p for p in module.parameters() if p.requires_grad]
    for unit in units:
        unit.reshard()
    return params


def local_bytes(params: list[nn.Parameter]) -> int:
    """Bytes of ``params`` held by this process (its shards under FSDP, all of them otherwise)."""
    return sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in params
    )


def full_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` with each DTensor gathered whole (a collective: every process calls it, alike)."""
    return {name: t.full_tensor() if isinstance(t, DTensor) else t for name, t in tensors.items()}


def shard_like(value: Tensor, like: Tensor) -> Tensor:
    """The whole tensor ``value`` laid out as ``like``: this process's shard of it when ``like`` is a
    DTensor (every process holds ``value``, so nothing is sent), ``value`` otherwise."""
    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def prepare(
    accelerator: Accelerator,
    generator: nn.Module,
    assistant: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    schedulers: list,
    *,
    sharded: bool,
) -> tuple:
    """accelerate's ``prepare`` of the two networks, then their optimisers, then their schedulers.

    ``sharded`` networks (already FSDP2 modules) are returned as they are, with their optimisers;
    accelerate prepares only the schedulers, and the optimiser states are kept by
    :func:`keep_optimizer_states` (accelerate would save only the main process's shards)."""
    if not sharded:
        return accelerator.prepare(generator, assistant, *optimizers, *schedulers)
    keep_optimizer_states(accelerator, {"generator": (generator, optimizers[0]), "assistant": (assistant, optimizers[1])})
    return (generator, assistant, *optimizers, *accelerator.prepare(*schedulers))


def keep_optimizer_states(accelerator: Accelerator, networks: Mapping[str, tuple[nn.Module, torch.optim.Optimizer]]) -> None:
    """Save and load the optimiser of each sharded network ``name → (module, optimizer)`` with
    accelerate's ``save_state``/``load_state`` (as its hooks, run by every process).

    The state is gathered to the main process as a full state dict (keys are parameter names) and
    written there to ``<name>_optimizer.bin``; loading reads it on the main process and scatters it."""
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)

    def save(models: list, weights: list, output_dir: str) -> None:
        for name, (module, optimizer) in networks.items():
            state = get_optimizer_state_dict(module, optimizer, options=full)
            if accelerator.is_main_process:
                torch.save(state, Path(output_dir) / OPTIMIZER_FILE.format(name=name))

    def load(models: list, input_dir: str) -> None:
        for name, (module, optimizer) in networks.items():
            file = Path(input_dir) / OPTIMIZER_FILE.format(name=name)
            if not file.is_file():  # checked by every process, so none waits for the scatter
                raise CheckpointError(f"{input_dir}: no {file.name} (not written by a loop.fsdp run)")
            state = torch.load(file, weights_only=True) if accelerator.is_main_process else {}
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=state, options=options)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)
