"""The boundaries between distar's parts, as torch-only protocols.

- :class:`Backend` is what Algorithm 1 needs from a model family: the diffusers adapters
  (:mod:`distar.backends`) and the embedded worlds (:mod:`distar.worlds`) implement it, and
  :mod:`distar.train` drives it without knowing which one it has.
- :class:`ImageModel` is what the evaluation suite needs from anything that makes images;
  :class:`BackendModel` is one made from a live backend (a trainer's sample grids, a world's generator).

Symbols follow docs/math.md §0: ``x0`` a clean sample, ``x_t`` its noised version (2.1), ``t`` a
time in the schedule's own units (integer steps for discrete schedules, floats for continuous ones).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from distar.diffusion.process import PredictionType, Schedule

#: Backend-specific prompt conditioning (e.g. a dict of text embeddings); opaque to the trainer.
Conditioning = Any

#: The noise source of a re-noising: one generator per sample (a list), one for the batch, or None
#: for torch's global RNG.
NoiseGenerators = torch.Generator | list[torch.Generator] | None


@runtime_checkable
class Backend(Protocol):
    """A generator g_θ, a frozen reference s_ref and an assistant s_ψ over one sample space.

    ``generator`` and ``assistant`` are the trainable modules; a trainer may replace these attributes
    by wrapped versions (DDP/FSDP) and the methods below must call through them. All ``*_x0`` methods
    return x0-predictions (§1) whose parameters are not trained by the caller's loss but whose graph
    through ``x_t`` is kept (Theorem 3.1).

    The generator takes ``num_steps`` = k steps (k = 1: one step). Step i maps its input (z for
    i = 0, else the x0 of step i − 1 re-noised to step i) to x0 (:meth:`generate`, :meth:`renoise`);
    :meth:`sample` runs all k. :class:`FewStepSampling` implements :meth:`sample` from the other two,
    and :class:`OneStepBackend` gives the few-step members of a one-step generator.
    """

    schedule: Schedule
    generator: nn.Module
    assistant: nn.Module
    #: The frozen reference network when it is a module of its own; None when it has none (the
    #: assistant with its adapters disabled, or an analytic reference).
    reference: nn.Module | None
    #: What the assistant network outputs before conversion to x0 (§1); it sets the "native" DSM weighting.
    prediction_type: PredictionType

    @property
    def num_steps(self) -> int:
        """k, the number of generator steps (1: a one-step generator)."""
        ...

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Conditioning for a batch of prompts (no gradient)."""
        ...

    def sample_latents(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Generator input noise z ~ N(0, I), shape (B, *latent_shape)."""
        ...

    def generate(self, z: Tensor, cond: Conditioning, step: int = 0) -> Tensor:
        """x0 = g_θ(x, c) at generator step ``step`` (0 ≤ step < k; x = z at step 0): one network
        evaluation, differentiable in θ."""
        ...

    def renoise(self, x0: Tensor, step: int, generator: NoiseGenerators = None) -> Tensor:
        """The input of generator step ``step`` (1 ≤ step < k): ``x0`` noised (2.1) to that step's time
        with fresh ε drawn from ``generator``."""
        ...

    def sample(self, z: Tensor, cond: Conditioning, generator: NoiseGenerators = None) -> Tensor:
        """x0 after all k generator steps from z, without gradient (what inference makes); the
        re-noisings draw from ``generator``."""
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


class FewStepSampling:
    """Mixin: :meth:`Backend.sample` as k-step inference runs it, from ``num_steps``, ``generate`` and ``renoise``."""

    @torch.no_grad()
    def sample(self: Backend, z: Tensor, cond: Conditioning, generator: NoiseGenerators = None) -> Tensor:
        """x0 after all k generator steps from z: generate, re-noise to the next step, repeat."""
        x = z
        for step in range(self.num_steps):
            x0 = self.generate(x, cond, step)
            if step + 1 < self.num_steps:
                x = self.renoise(x0, step + 1, generator)
        return x0


class OneStepBackend(FewStepSampling):
    """Base of a backend whose generator makes x0 in one evaluation: k = 1, nothing to re-noise, and
    :meth:`sample` is ``generate(z, cond)`` without gradient."""

    num_steps = 1

    def renoise(self, x0: Tensor, step: int, generator: NoiseGenerators = None) -> Tensor:
        """Refused: a one-step generator has no step ≥ 1."""
        raise ValueError(f"a one-step generator has no step {step} to re-noise to")


@runtime_checkable
class ImageModel(Protocol):
    """Anything that turns prompts and seeds into images, for evaluation."""

    name: str

    def generate_images(self, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """Images (B, 3, H, W) in [0, 1], one per (prompt, seed) pair, deterministic in the seed."""
        ...


class BackendModel:
    """A live backend's generator as an :class:`ImageModel`: its k steps (``sample``), decoded, without
    gradient, with whatever weights the backend holds when called (e.g. EMA weights swapped in).

    z for each image is drawn from its own seed with the backend's ``sample_latents``. The re-noisings of
    a few-step generator draw from torch's global generator seeded with ``renoise_seed`` once per call,
    inside a fork of the global random state (CPU, and ``device`` when it is a GPU): sampling leaves it as
    it was. ``batch_size`` images go through at once; ``precision()`` (e.g. accelerate's ``autocast``) is
    entered around each batch's prompt encoding, ``sample`` and ``decode``.
    """

    def __init__(
        self,
        backend: Backend,
        name: str,
        *,
        renoise_seed: int = 0,
        batch_size: int | None = None,
        device: torch.device | None = None,
        precision: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        self.backend, self.name = backend, name
        self.renoise_seed, self.batch_size, self.precision = renoise_seed, batch_size, precision
        #: where the generator runs (default: its parameters' device)
        self.device = device

    @torch.no_grad()
    def generate_images(self, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] as ``decode`` gives them (float32, CPU)."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        backend, out = self.backend, []
        device = self.device or next(backend.generator.parameters()).device
        batch = self.batch_size or max(len(prompts), 1)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.renoise_seed)
            for i in range(0, len(prompts), batch):
                z = torch.cat([backend.sample_latents(1, torch.Generator().manual_seed(int(s))) for s in seeds[i : i + batch]])
                with self.precision():
                    cond = backend.encode_prompts(list(prompts[i : i + batch]))
                    out.append(backend.decode(backend.sample(z, cond)).float().cpu())
        return torch.cat(out)
