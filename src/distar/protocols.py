"""The boundaries between distar's parts, as torch-only protocols.

- :class:`Backend` is what Algorithm 1 needs from a model family: the diffusers adapters
  (:mod:`distar.backends`) and the embedded worlds (:mod:`distar.worlds`) implement it, and
  :mod:`distar.train` drives it without knowing which one it has.
- :class:`ImageModel` is what the evaluation suite needs from anything that makes images.

Symbols follow docs/math.md §0: ``x0`` a clean sample, ``x_t`` its noised version (2.1), ``t`` a
time in the schedule's own units (integer steps for discrete schedules, floats for continuous ones).
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from distar.diffusion.schedule import Schedule

#: Backend-specific prompt conditioning (e.g. a dict of text embeddings); opaque to the trainer.
Conditioning = Any


@runtime_checkable
class Backend(Protocol):
    """A generator g_θ, a frozen reference s_ref and an assistant s_ψ over one sample space.

    ``generator`` and ``assistant`` are the trainable modules; a trainer may replace these attributes
    by wrapped versions (DDP/FSDP) and the methods below must call through them. All ``*_x0`` methods
    return x0-predictions (§1) whose parameters are not trained by the caller's loss but whose graph
    through ``x_t`` is kept (Theorem 3.1).
    """

    schedule: Schedule
    generator: nn.Module
    assistant: nn.Module

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Conditioning for a batch of prompts (no gradient)."""
        ...

    def sample_latents(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Generator input noise z ~ N(0, I), shape (B, *latent_shape)."""
        ...

    def generate(self, z: Tensor, cond: Conditioning) -> Tensor:
        """x0 = g_θ(z, c): one network evaluation, differentiable in θ."""
        ...

    def reference_x0(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """Conditional reference x0-prediction x̂0_ref(x_t | c)."""
        ...

    def reference_x0_cond_uncond(
        self, x_t: Tensor, t: Tensor, cond: Conditioning
    ) -> tuple[Tensor, Tensor]:
        """(x̂0_ref(x_t | c), x̂0_ref(x_t | ∅)), computed as one batched forward where possible."""
        ...

    def assistant_x0(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """Assistant x0-prediction x̂0_ψ(x_t | c)."""
        ...

    def decode(self, x0: Tensor) -> Tensor:
        """Samples to reward-model inputs (images in [0, 1] for image backends), with gradient."""
        ...

    def generator_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters updated by the generator step."""
        ...

    def assistant_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters updated by the assistant (DSM) step."""
        ...


@runtime_checkable
class ImageModel(Protocol):
    """Anything that turns prompts and seeds into images, for evaluation."""

    name: str

    def generate_images(self, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """Images (B, 3, H, W) in [0, 1], one per (prompt, seed) pair, deterministic in the seed."""
        ...
