"""The trainable subset of a module's state dict: what training checkpoints store for g_θ and s_ψ."""

from __future__ import annotations

from typing import Iterable, Mapping

from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn


def key_mismatch(expected: Iterable[str], got: Iterable[str]) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of ``got`` against ``expected``, sorted."""
    expected, got = set(expected), set(got)
    return sorted(expected - got), sorted(got - expected)


def trainable_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """The parameters with ``requires_grad`` of the unwrapped module, by their state-dict names."""
    inner = extract_model_from_parallel(module)
    return {name: p.detach() for name, p in inner.named_parameters() if p.requires_grad}


def state_mismatch(expected: Mapping[str, Tensor], got: Mapping[str, Tensor]) -> str | None:
    """Why tensors ``got`` cannot stand for ``expected`` (missing or unexpected names, another shape,
    integer or boolean values for floating-point weights), or None when they can."""
    missing, unexpected = key_mismatch(expected, got)
    if missing or unexpected:
        return f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
    for name in sorted(got):
        value, want = got[name], expected[name]
        if value.shape != want.shape:
            return f"{name} has shape {tuple(value.shape)}, the model's is {tuple(want.shape)}"
        if want.is_floating_point() and not value.is_floating_point():
            return f"{name} holds {str(value.dtype).removeprefix('torch.')} values, not floating-point weights"
    return None


def load_trainable_state_dict(module: nn.Module, state: Mapping[str, Tensor], source: str = "state dict") -> None:
    """Load ``state`` into the unwrapped module: exactly the trainable parameters, each with its shape
    (see :func:`state_mismatch`); ValueError otherwise."""
    inner = extract_model_from_parallel(module)
    problem = state_mismatch(trainable_state_dict(inner), state)
    if problem is not None:
        raise ValueError(f"{source} does not match the trainable weights: {problem}")
    inner.load_state_dict(dict(state), strict=False)
