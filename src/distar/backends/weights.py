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


def load_trainable_state_dict(module: nn.Module, state: Mapping[str, Tensor], source: str = "state dict") -> None:
    """Load ``state`` into the unwrapped module; its keys must be exactly the trainable parameter names."""
    inner = extract_model_from_parallel(module)
    missing, unexpected = key_mismatch(trainable_state_dict(inner), state)
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the trainable weights: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    inner.load_state_dict(dict(state), strict=False)
