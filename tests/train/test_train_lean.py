"""The lean iteration: weight gradients only for the network being updated (bit-identical generator
gradients), gradients freed after their step, prompts encoded once, adapter switches without walks,
the CFG reference in one call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distar.backends.lora import adapter_state, lora_layers
from distar.config import load_config
from distar.train.algorithm import generator_losses
from distar.train.build import build_trainer
from distar.train.callbacks import Callback
from distar.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUICK = ["logging.progress_bar=false", "sampling.every=0", "logging.report_to=none", "ema.decay=0"]
LAYOUTS = {
    "full assistant copy": ["model.assistant_lora_rank=0"],
    "LoRA assistant on a copy": ["model.assistant_lora_rank=4", "model.assistant_lora_shared=false"],
    "shared LoRA, checkpointing": ["model.assistant_lora_rank=4", "model.gradient_checkpointing=true"],
    "LoRA generator, shared LoRA": ["model.generator_lora_rank=4", "model.assistant_lora_rank=4"],
}


def trainer_for(tmp_path, *overrides):
    config = load_config(
        TrainConfig, CONFIGS / "tiny_sdxl.yaml",
        [f"output_dir={tmp_path}", *QUICK, "loop.max_steps=4", "loop.assistant_steps=1", *overrides],
    )
    torch.manual_seed(0)  # LoRA initialisation draws from the global generator
    return build_trainer(config)


def generator_gradients(trainer, drop_inputs: bool) -> tuple[list[torch.Tensor], list]:
    """One train_step; the generator's raw gradients and the assistant's .grad at the generator update."""
    seen = {}
    backward = trainer.accelerator.backward

    class Spy(Callback):
        def on_phase(self, trainer, phase):
            if phase == "generator update":
                seen["generator"] = [p.grad.clone() for p in trainer.generator_params]
                seen["assistant"] = [p.grad for p in trainer.assistant_params]

    trainer.callbacks.callbacks.append(Spy())
    if drop_inputs:  # the previous iteration: backward through every trainable weight
        trainer.accelerator.backward = lambda loss, inputs=None: backward(loss)
    trainer.train_step()
    return seen["generator"], seen["assistant"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_generator_gradients_are_bit_identical_without_assistant_weight_gradients(layout, tmp_path):
    overrides = ["objective.reward_scale=0", *LAYOUTS[layout]]
    lean = trainer_for(tmp_path / "lean", *overrides)
    lean_grads, assistant_grads = generator_gradients(lean, drop_inputs=False)
    full = trainer_for(tmp_path / "full", *overrides)
    full_grads, full_assistant = generator_gradients(full, drop_inputs=True)
    assert all(torch.equal(a, b) for a, b in zip(lean_grads, full_grads, strict=True))
    assert all(g is None for g in assistant_grads)
    assert any(g is not None and g.abs().sum() > 0 for g in full_assistant)  # the old backward did compute ∇ψ
    reference = lean.backend.reference
    assert reference is None or all(p.grad is None for p in reference.parameters())
    assert all(p.grad is None for p in [*lean.generator_params, *lean.assistant_params])  # freed after stepping


def test_prompts_are_encoded_once_each_and_as_if_alone(tmp_path):
    backend = trainer_for(tmp_path, "objective.reward_scale=0", "model.prompt_cache_size=2").backend
    calls = []
    encode = backend._encode
    backend._encode = lambda prompts: calls.append(list(prompts)) or encode(prompts)
    batch = backend.encode_prompts(["a", "b", "a"])
    assert calls == [["a"], ["b"]]
    alone = encode(["b"])
    assert torch.equal(batch.embeds[1], alone.embeds[0]) and torch.equal(batch.pooled[1], alone.pooled[0])
    assert torch.equal(batch.embeds[0], batch.embeds[2])
    backend.encode_prompts(["b", "a"])
    assert len(calls) == 2  # both cached
    backend.encode_prompts(["c"])  # the cache holds two: "b", least recently used, goes
    backend.encode_prompts(["a"])
    backend.encode_prompts(["b"])
    assert calls[2:] == [["c"], ["b"]]


def test_cfg_reference_is_one_batched_call_per_generator_step(tmp_path):
    trainer = trainer_for(tmp_path, "objective.reward_scale=0", "model.assistant_lora_rank=0")
    backend, calls = trainer.backend, []
    handle = backend.reference.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    prompts = ["a photo of a cat", "a close-up of a sunflower"]
    cond, z = backend.encode_prompts(prompts), backend.sample_latents(2)
    generator_losses(backend, cond, z, prompts=prompts, reward=None, loss=trainer.loss)
    handle.remove()
    assert trainer.config.objective.guidance_scale > 1 and calls == [4]  # conditional and unconditional together


def test_adapter_switch_restores_state_and_requires_grad(tmp_path):
    unet = trainer_for(tmp_path, "objective.reward_scale=0").backend.assistant
    layers = lora_layers(unet)
    params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
    assert layers and params
    with adapter_state(unet, enabled=False):
        assert all(layer.disable_adapters for layer in layers)
        with adapter_state(unet, enabled=False):  # already off: nothing to switch
            pass
        assert all(layer.disable_adapters for layer in layers)
    assert not any(layer.disable_adapters for layer in layers)
    assert all(p.requires_grad for p in params)
