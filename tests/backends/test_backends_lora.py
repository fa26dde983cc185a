"""LoRA layouts: the assistant as an adapter on the reference's own weights, LoRA generator, dtypes."""

from __future__ import annotations

import pytest
import torch

from distar.backends.lora import lora_layers
from distar.backends.weights import load_trainable_state_dict, trainable_state_dict


def _lora_params(module):
    return [p for n, p in module.named_parameters() if "lora_" in n]


def _x_t(backend, seed=0):
    """Noise at 15 % and 70 % of the schedule (integer steps for UNets, σ for flow models)."""
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(2, *backend.latent_shape, generator=gen)
    t = torch.tensor([0.15, 0.7]) * backend.schedule.t_hi
    return x_t, t.round().long() if backend.schedule.discrete else t


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "sana"])
def test_shared_adapter_off_is_the_reference_exactly(family, make_backend, perturb):
    shared = make_backend(family, assistant_lora_rank=4)
    plain = make_backend(family)
    assert shared.reference is None and lora_layers(shared.assistant)
    perturb(_lora_params(shared.assistant), seed=1)  # adapter on ≠ reference
    x_t, t = _x_t(shared)
    cond = shared.encode_prompts(["a cat", "a dog"])
    with torch.no_grad():
        ref = shared.reference_x0(x_t, t, cond)
        ref_c, ref_u = shared.reference_x0_cond_uncond(x_t, t, cond)
        assert torch.equal(ref, plain.reference_x0(x_t, t, cond))
        assert torch.equal(ref_u, plain.reference_x0_cond_uncond(x_t, t, cond)[1])
        assert not torch.allclose(shared.assistant_x0(x_t, t, cond), ref)


def test_shared_adapter_on_trains_only_adapter_params(make_backend, perturb):
    backend = make_backend("sd", assistant_lora_rank=4)
    lora = _lora_params(backend.assistant)
    assert {id(p) for p in backend.assistant_parameters()} == {id(p) for p in lora}
    perturb(lora, seed=2)
    x_t, t = _x_t(backend)
    x_t.requires_grad_(True)
    cond = backend.encode_prompts(["a", "b"])
    # Reference and assistant in one graph (as in the generator loss), then the DSM-style assistant loss.
    (backend.reference_x0(x_t, t, cond) - backend.assistant_x0(x_t, t, cond)).square().sum().backward()
    assert x_t.grad.abs().sum() > 0
    for name, p in backend.assistant.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
    assert all(p.requires_grad for p in lora)  # the reference pass restored the adapter's requires_grad


def test_reference_pass_keeps_a_frozen_adapter_frozen(make_backend):
    """A trainer may freeze ψ during the generator step; the shared reference pass must not undo that."""
    backend = make_backend("sd", assistant_lora_rank=4)
    lora = _lora_params(backend.assistant)
    for p in lora:
        p.requires_grad_(False)
    x_t, t = _x_t(backend)
    backend.reference_x0(x_t, t, backend.encode_prompts(["a", "b"]))
    assert not any(p.requires_grad for p in lora)


def _grad_x_t(backend, cond_prompts=("a red cube", "blue")):
    x_t, t = _x_t(backend, seed=3)
    x_t.requires_grad_(True)
    cond = backend.encode_prompts(list(cond_prompts))
    ref_c, ref_u = backend.reference_x0_cond_uncond(x_t, t, cond)
    loss = (ref_c * 1.3 - ref_u).square().sum() + (backend.assistant_x0(x_t, t, cond) * ref_c).sum()
    loss.backward()
    return x_t.grad


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "sana"])
def test_gradient_checkpointing_recomputes_the_reference_with_adapters_off(family, make_backend, perturb):
    plain = make_backend(family, assistant_lora_rank=4)
    checkpointed = make_backend(family, assistant_lora_rank=4, gradient_checkpointing=True)
    perturb(_lora_params(plain.assistant), seed=4, scale=0.3)
    load_trainable_state_dict(checkpointed.assistant, trainable_state_dict(plain.assistant))
    expected = _grad_x_t(plain)
    torch.testing.assert_close(_grad_x_t(checkpointed), expected, rtol=1e-4, atol=1e-6)
    # Sensitivity check: diffusers' default checkpointing recomputes the reference blocks in the
    # backward-time adapter state (on); torch notices the adapter's extra saved tensors.
    checkpointed.assistant.enable_gradient_checkpointing()
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        _grad_x_t(checkpointed)

def test_lora_copy_layout_keeps_a_separate_reference(make_backend, perturb):
    backend = make_backend("sd", assistant_lora_rank=4, assistant_lora_shared=False)
    assert backend.reference is not None and not lora_layers(backend.reference)
    perturb(_lora_params(backend.assistant), seed=5)
    x_t, t = _x_t(backend)
    cond = backend.encode_prompts(["a", "b"])
    assert not torch.allclose(backend.assistant_x0(x_t, t, cond), backend.reference_x0(x_t, t, cond))


@pytest.mark.parametrize("family", ["sdxl", "sd3", "sana"])
def test_lora_generator_trains_only_its_adapter(family, make_backend, perturb):
    backend = make_backend(family, generator_lora_rank=4, dtype="bfloat16")
    lora = _lora_params(backend.generator)
    assert {id(p) for p in backend.generator_parameters()} == {id(p) for p in lora}
    assert all(p.dtype == torch.float32 for p in lora)
    base = [p for n, p in backend.generator.named_parameters() if "lora_" not in n]
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in base)
    z = backend.sample_latents(2, torch.Generator().manual_seed(0))
    cond = backend.encode_prompts(["a", "b"])
    before = backend.generate(z, cond).detach()
    perturb(lora, seed=6)
    x0 = backend.generate(z, cond)
    assert x0.dtype == torch.float32 and not torch.allclose(x0, before)
    x0.sum().backward()
    assert all(p.grad is not None for p in lora) and all(p.grad is None for p in base)


def test_bfloat16_frozen_weights_keep_float32_trainables(make_backend):
    backend = make_backend("sd", dtype="bfloat16", assistant_lora_rank=4)
    assert backend.pipe.vae.dtype == torch.bfloat16 and backend.pipe.text_encoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in backend.generator_parameters())
    assert all(p.dtype == torch.float32 for p in backend.assistant_parameters())
    x_t, t = _x_t(backend)
    x_t.requires_grad_(True)
    cond = backend.encode_prompts(["a", "b"])
    x0 = backend.reference_x0(x_t, t, cond)
    assert x0.dtype == torch.float32
    backend.decode(x0).sum().backward()
    assert torch.isfinite(x_t.grad).all() and x_t.grad.abs().sum() > 0


def _unique_param_bytes(backend):
    """Bytes of distinct parameter storages held by the backend's models."""
    modules = [backend.generator, backend.assistant, backend.reference]
    modules += [getattr(backend.pipe, n, None) for n in ("vae", "text_encoder", "text_encoder_2")]
    storages = {p.data_ptr(): p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters()}
    return sum(storages.values())


def test_memory_options_take_effect(make_backend):
    """The savings the docs table claims, checked on the parameter bytes the backend really holds."""
    default = make_backend("sdxl")
    unet = sum(p.numel() * 4 for p in default.reference.parameters())
    others = [getattr(default.pipe, n) for n in ("vae", "text_encoder", "text_encoder_2")]
    frozen_rest = sum(p.numel() * 4 for m in others for p in m.parameters())
    shared = make_backend("sdxl", assistant_lora_rank=4)
    lora = sum(p.numel() * 4 for p in shared.assistant_parameters())
    # Shared layout: the assistant costs its adapter only, not a second UNet.
    assert _unique_param_bytes(default) - _unique_param_bytes(shared) == unet - lora
    # bfloat16 frozen weights: reference, VAE and text encoders at half the bytes; trainables unchanged.
    bf16 = make_backend("sdxl", dtype="bfloat16")
    assert _unique_param_bytes(default) - _unique_param_bytes(bf16) == (unet + frozen_rest) // 2


@pytest.mark.parametrize("targets", [["nope"], ["to_q", "nope"]])
def test_lora_targets_that_match_no_module_are_one_line_errors(make_backend, targets):
    from distar.config import ConfigError

    with pytest.raises(ConfigError, match=r"^model.lora_target_modules: 'nope' match no module of the UNet2DConditionModel \(it has e.g. to_q"):
        make_backend("sd", generator_lora_rank=2, lora_target_modules=targets)
