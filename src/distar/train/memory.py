"""Peak accelerator memory of an Algorithm 1 iteration, estimated on fake tensors: no GPU, no weights.

:func:`estimate_iteration_memory` runs distar's own code on a training config: ``build_backend`` and
``build_reward`` with random weights (``model.random_weights``, the rewards' ``random_weights``), the
:class:`~distar.train.loop.Trainer`, a warm-up that leaves what a first iteration leaves (prompts
encoded, optimiser states made) and one ``train_step()``. Under PyTorch's ``FakeTensorMode`` every
tensor has its shape, dtype and device but no data, so the real architectures run at full resolution
on a CPU. An :class:`AllocationTracker` sees each storage an operator creates on the accelerator and
follows it until Python frees it: weights, gradients, optimiser states, the EMA, autocast's weight
copies, the activations autograd saves (or recomputes, with gradient checkpointing) and
temporaries. The estimate is the peak of live bytes during that steady-state iteration, which is
what ``torch.cuda.max_memory_allocated`` measures after a warm-up iteration.

``device_model="cuda"`` makes the CPU run behave as a CUDA device does in the respects that change
memory:

- CPU autocast gets CUDA's float32 list (:data:`CUDA_FLOAT32_OPS`: norms, softmax, exp, pow, ...), whose
  outputs CUDA keeps in float32 where the CPU list keeps bfloat16;
- AdamW uses its foreach implementation, CUDA's default, whose step allocates a temporary per state;
- each allocation is rounded up to 512 bytes, as the CUDA caching allocator rounds it;
- offloaded text encoders wait on the meta device, outside the count, until prompts are encoded.

Attention runs through ``scaled_dot_product_attention``, whose CPU flash kernel saves what CUDA's
flash and memory-efficient kernels save (inputs, output, log-sum-exp; no attention matrix). Not
modelled: the CUDA context, cuBLAS/cuDNN workspaces, the allocator's cached but unused blocks
(reserved minus allocated) and communication buffers; ``nvidia-smi`` shows these on top. Fake tensors
on a CUDA device cannot run autograd in a CPU-only build, hence the CPU device and this model.

Data-dependent reads (``bool(t)``, ``t.item()``) have no value on fake tensors; :class:`AssumedValues`
answers them as a healthy run would (checks pass, updates are made, a few-step generator trains its
first step). ``optim.use_8bit_adam``: bitsandbytes has no CPU path, so :class:`AdamW8bitStandIn` holds
the states AdamW8bit would hold. ``fake=False`` runs the same on real tensors (small models): the
measured counterpart the tests compare the estimate with.
"""

from __future__ import annotations

import tempfile
import warnings
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only

from distar.config import from_dict, to_dict
from distar.train.callbacks import Callback
from distar.train.config import OptimizerConfig, TrainConfig
from distar.train.loop import Trainer
from distar.train.setup import make_accelerator

aten = torch.ops.aten

#: Rounding of each allocation by the CUDA caching allocator (its smallest block).
CUDA_BLOCK_BYTES = 512

#: Ops that CUDA autocast runs in float32 where CPU autocast leaves them in the input's dtype: PyTorch's
#: list of "CUDA ops that can autocast to float32", as far as the models and losses here can reach it.
CUDA_FLOAT32_OPS = (
    "group_norm", "layer_norm", "sum", "softmax.int", "log_softmax.int", "exp", "log", "rsqrt", "reciprocal",
    "pow.Tensor_Scalar", "pow.Tensor_Tensor", "sum.dim_IntList", "cumsum", "prod",
    "softplus", "mse_loss", "l1_loss", "cosine_similarity", "norm.Scalar", "norm.ScalarOpt_dim",
)

#: Where offloaded text encoders wait in a fake run: off the accelerator's count.
FAKE_OFFLOAD_DEVICE = torch.device("meta")

#: Prompts of an estimate (the config's data section is not read): two, as gpu_check uses.
PROMPTS = ("a photo of an astronaut riding a horse on the moon", "a watercolour fox in a field of flowers")

DeviceModel = Literal["cuda", "cpu"]


class AllocationTracker(TorchDispatchMode):
    """Live and peak bytes of the storages that operators create on ``device``.

    Every operator output on ``device`` whose storage is new is counted (rounded up to
    ``granularity`` bytes) until its storage is freed. ``phase`` labels the peak: the caller sets it,
    and an allocation made while autograd runs a backward pass adds " backward" to it.
    """

    def __init__(self, device: torch.device | str, granularity: int = 1) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.granularity = granularity
        self.live = 0
        self.peak = 0
        self.phase = ""
        self.peak_phase = ""
        self.phase_peaks: dict[str, int] = {}

    def reset_peak(self) -> None:
        """Start a new peak (and new peaks per phase) from the bytes live now."""
        self.peak, self.peak_phase = self.live, self.phase
        self.phase_peaks = {}

    def _freed(self, size: int) -> None:
        self.live -= size

    def _count(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        if getattr(storage, "_distar_tracker", None) is self:
            return
        storage._distar_tracker = self  # the storage's Python object lives as long as the storage
        size = -(-storage.nbytes() // self.granularity) * self.granularity
        weakref.finalize(storage, self._freed, size)
        self.live += size
        phase = f"{self.phase} backward" if torch._C._current_graph_task_id() != -1 else self.phase
        if self.live > self.phase_peaks.get(phase, 0):
            self.phase_peaks[phase] = self.live
        if self.live > self.peak:
            self.peak, self.peak_phase = self.live, phase

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, Tensor) and tensor.device == self.device:
                self._count(tensor)
        return out


class AssumedValues(TorchDispatchMode):
    """Answers the data-dependent reads of fake tensors as a healthy run would.

    ``bool()`` of an ``all()`` reduction is True (validity checks pass); every other boolean is False
    (a comparison or ``any()``: nothing is non-finite, no update is skipped); integers are 0 (a few-step
    generator trains its first step); floats are 1.0 (an optimiser's step count).
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is aten._local_scalar_dense.default:
            tensor = args[0]
            if tensor.dtype == torch.bool:
                return bool(getattr(tensor, "_distar_all", False))
            return 1.0 if tensor.dtype.is_floating_point else 0
        out = func(*args, **(kwargs or {}))
        if func in (aten.all.default, aten.all.dim, aten.all.dims):
            out._distar_all = True
        return out


@contextmanager
def fake_tensors() -> Iterator[None]:
    """PyTorch's ``FakeTensorMode`` with :class:`AssumedValues`, for building and training models.

    Neither fake op outputs nor fake constants (``torch.tensor(2.5)``) are remembered by weak
    reference: such a reference stops ``nn.Module.to`` from swapping a fake parameter for its converted
    copy (casts and device moves of fake modules). A deep copy of a fake tensor keeps the mode (a copied
    mode would make every later op convert the copy).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    converter = mode.fake_tensor_converter
    converter.set_tensor_memo = lambda tensor, fake: None
    converter.add_constant_storage_mapping = lambda fake: None
    convert = converter.from_real_tensor

    def from_real_tensor(*args: Any, **kwargs: Any) -> Tensor:
        try:
            return convert(*args, **kwargs)
        finally:
            converter.meta_converter.tensor_memo.clear()

    converter.from_real_tensor = from_real_tensor
    mode.__deepcopy__ = lambda memo: mode
    with mode, AssumedValues(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
        # the device model's optimisers replace the ones the schedulers were built on (_device_optimizers)
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        yield


def _float32_kernel(op: Any) -> Callable[..., Any]:
    """``op`` with its lower-precision floating inputs cast to float32, below CPU autocast."""
    excluded = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def upcast(tensor: Tensor) -> Tensor:
        return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op(*tree_map_only(Tensor, upcast, args), **tree_map_only(Tensor, upcast, kwargs))

    return kernel


@contextmanager
def cuda_float32_autocast() -> Iterator[None]:
    """CPU autocast runs :data:`CUDA_FLOAT32_OPS` in float32, as CUDA autocast does (process-wide,
    for the duration of the block)."""
    library = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overriding the CPU list's own kernels warns
            for name in CUDA_FLOAT32_OPS:
                base, _, overload = name.partition(".")
                library.impl(name, _float32_kernel(getattr(getattr(aten, base), overload or "default")), "AutocastCPU")
        yield
    finally:
        library._destroy()


class AdamW8bitStandIn(torch.optim.Optimizer):
    """The memory of bitsandbytes' ``AdamW8bit`` (blockwise quantisation, its default), for estimates.

    A parameter of at least :attr:`MIN_8BIT_SIZE` elements gets two uint8 states of its shape and two
    float32 absmax vectors (one value per block of :attr:`BLOCK` elements); a smaller one two float32
    states. The fused bitsandbytes update allocates nothing, and neither does :meth:`step`, which
    creates the states and leaves the weights unchanged: this is not an optimiser.
    """

    MIN_8BIT_SIZE = 4096
    BLOCK = 256

    def __init__(self, params: Iterable[nn.Parameter], config: OptimizerConfig) -> None:
        defaults = dict(lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if p.grad is None or state:
                    continue
                if p.numel() >= self.MIN_8BIT_SIZE:
                    blocks = -(-p.numel() // self.BLOCK)
                    for i in (1, 2):
                        state[f"state{i}"] = torch.zeros_like(p, dtype=torch.uint8)
                        state[f"absmax{i}"] = torch.zeros(blocks, device=p.device)
                else:
                    state["state1"], state["state2"] = torch.zeros_like(p), torch.zeros_like(p)


class _PromptCycle:
    """The prompts in order, ``batch_size`` at a time (a shuffled stream's permutation would be fake)."""

    def __init__(self, prompts: Sequence[str], batch_size: int) -> None:
        self.prompts, self.batch_size, self.position = list(prompts), batch_size, 0

    def next_batch(self) -> list[str]:
        batch = [self.prompts[(self.position + i) % len(self.prompts)] for i in range(self.batch_size)]
        self.position += self.batch_size
        return batch


class _PhaseTracker(Callback):
    """Labels the tracker's allocations with the phase of the step that makes them."""

    def __init__(self, tracker: AllocationTracker) -> None:
        self.tracker = tracker

    def on_phase(self, trainer: Trainer, phase: str) -> None:
        self.tracker.phase = phase


def _device_optimizers(trainer: Trainer, *, use_8bit: bool, foreach: bool) -> None:
    """Give the trainer the optimisers of the device model: foreach AdamW (CUDA's default), or the
    8-bit stand-in (in place of the AdamW that the estimation config builds)."""
    optim = trainer.config.optim
    for optimizer, params, config in (
        (trainer.generator_optimizer, trainer.generator_params, optim.generator),
        (trainer.assistant_optimizer, trainer.assistant_params, optim.assistant),
    ):
        if use_8bit:
            optimizer.optimizer = AdamW8bitStandIn(params, config)
        for group in optimizer.param_groups:
            group["foreach"] = foreach or group["foreach"]


@torch.no_grad()
def _warm_up(trainer: Trainer) -> None:
    """What a first iteration leaves behind, without its passes: the prompts and ∅ encoded, the
    reward's prompt embeddings cached, the optimiser states made (one step on zero gradients)."""
    prompts = trainer.data.prompts
    trainer.backend.encode_prompts(prompts)
    _ = trainer.backend.uncond
    if trainer.reward is not None:
        trainer.reward.score(torch.zeros(len(prompts), 3, 224, 224, device=trainer.accelerator.device), prompts)
    for optimizer in (trainer.generator_optimizer, trainer.assistant_optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the accelerator: the steady-state iteration's ``peak`` and where it falls
    (``peak_phase``), what is ``resident`` when it starts (weights, optimiser states, EMA, cached
    prompts), and the peak of the warm-up before it (build, prompt encoding, optimiser states made).

    ``phase_peaks`` is the peak of each phase of the iteration (an update's forward passes, its
    backward, its optimiser step). ``trainable`` holds the bytes of the trainable weights, optimiser
    states and EMA of each network (``"generator weights"``, ...): the state that data-parallel
    sharding splits.

    A real run (``fake=False``) also has ``allocator_peak``: ``resident`` plus the highest net
    allocation that the CPU allocator itself reports during the iteration (kernels' internal buffers
    included), an independent measurement of ``peak``."""

    peak: int
    peak_phase: str
    resident: int
    warm_up_peak: int
    allocator_peak: int | None = None
    phase_peaks: dict[str, int] = field(default_factory=dict)
    trainable: dict[str, int] = field(default_factory=dict)


def _bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages of ``tensors`` (non-tensors are skipped)."""
    storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors if isinstance(t, Tensor)}
    return sum(storages.values())


def trainable_state_bytes(trainer: Trainer) -> dict[str, int]:
    """Bytes of each network's trainable weights and optimiser states, and of the EMA."""
    found = {}
    for name, params, optimizer in (
        ("generator", trainer.generator_params, trainer.generator_optimizer),
        ("assistant", trainer.assistant_params, trainer.assistant_optimizer),
    ):
        found[f"{name} weights"] = _bytes(params)
        found[f"{name} optimiser states"] = _bytes(v for state in optimizer.state.values() for v in state.values())
    found["EMA"] = _bytes(trainer.ema.shadow_params) if trainer.ema is not None else 0
    return found


@contextmanager
def cpu_allocator_peak() -> Iterator[list[int]]:
    """The highest net CPU allocation in bytes during the block, from the allocator records of
    ``torch.profiler``; appended to the yielded list when the block ends."""
    from torch.profiler import ProfilerActivity, profile

    found: list[int] = []
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        yield found
    records = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    net = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        if record.device_type() == torch.autograd.DeviceType.CPU:
            net += record.nbytes()
            peak = max(peak, net)
    found.append(peak)


def estimation_config(config: TrainConfig, output_dir: str) -> TrainConfig:
    """``config`` as an estimate runs it: random weights (``generator_init`` becomes a copy of the
    reference, same architecture), tiny models resolved to folders, CPU, ``output_dir``, nothing
    logged, sampled, monitored or saved, at least two steps, AdamW (bitsandbytes has no CPU path)."""
    from distar.backends.loading import resolve_pretrained
    from distar.io import tiny_asset
    from distar.rewards.spec import TINY

    data = to_dict(config)
    model = data["model"]
    model.update(random_weights=True, generator_init=None, pretrained=resolve_pretrained(model["pretrained"]))
    for spec in data["rewards"]:
        path = str(tiny_asset("reward", name=spec["name"])) if spec["path"] == TINY else spec["path"]
        spec.update(random_weights=True, path=path)
    data["loop"].update(cpu=True, max_steps=max(2, data["loop"]["max_steps"]))
    data["optim"]["use_8bit_adam"] = False  # AdamW, which the estimate replaces by its 8-bit stand-in
    data["logging"].update(report_to="none", progress_bar=False)
    data["sampling"]["every"] = 0
    data["monitor"]["every"] = 0
    data["checkpointing"].update(every=0, save_final=False)
    data["output_dir"] = output_dir
    return from_dict(TrainConfig, data)


def estimate_iteration_memory(
    config: TrainConfig,
    *,
    fake: bool = True,
    device_model: DeviceModel = "cuda",
    prompts: Sequence[str] = PROMPTS,
) -> MemoryEstimate:
    """Peak accelerator memory of one Algorithm 1 iteration of ``config`` (see the module notes).

    ``fake=False`` runs real tensors on the CPU: the measurement an estimate is checked against (small
    models only). Leaves accelerate's process-wide state reset.
    """
    from accelerate.state import AcceleratorState

    from distar.train.build import build_trainer

    cuda, use_8bit = device_model == "cuda", config.optim.use_8bit_adam
    with tempfile.TemporaryDirectory() as out, ExitStack() as stack:
        config = estimation_config(config, out)
        accelerator = make_accelerator(config)
        try:
            if fake:
                stack.enter_context(fake_tensors())
            if cuda:
                stack.enter_context(cuda_float32_autocast())
            tracker = stack.enter_context(AllocationTracker(accelerator.device, CUDA_BLOCK_BYTES if cuda else 1))
            tracker.phase = "build"
            trainer = build_trainer(
                config, accelerator, prompts=list(prompts), offload_device=FAKE_OFFLOAD_DEVICE if fake else "cpu",
                callbacks=[_PhaseTracker(tracker)],
            )
            _device_optimizers(trainer, use_8bit=use_8bit, foreach=cuda)
            trainer.data = _PromptCycle(trainer.data.prompts, trainer.data.batch_size)
            tracker.phase = "warm-up"
            _warm_up(trainer)
            warm_up_peak, resident = tracker.peak, tracker.live
            trainable = trainable_state_bytes(trainer)
            tracker.reset_peak()
            allocator_peak = None
            if fake:
                trainer.train_step()
            else:
                with cpu_allocator_peak() as allocated:
                    trainer.train_step()
                allocator_peak = resident + allocated[0]
            return MemoryEstimate(
                tracker.peak, tracker.peak_phase, resident, warm_up_peak, allocator_peak,
                phase_peaks=dict(tracker.phase_peaks), trainable=trainable,
            )
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)


def gib(value: int) -> float:
    """Bytes in GiB."""
    return value / 2**30

