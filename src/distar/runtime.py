"""The process distar runs in: its CPU threads and devices, checks of seeds and image sides, and the
facts a reported timing or figure depends on.

Imports nothing heavy at module level: commands add :func:`add_threads_argument` to their parsers.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import logging
import math
import os
import platform
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from distar.config import ConfigError
from distar.errors import UserError


#: Seeds of CPU ``torch.Generator`` noise: ``manual_seed`` takes any of these.
MAX_SEED = 2**63 - 1

#: The largest image side accepted for sampling (beyond it one image no longer fits a GPU).
MAX_IMAGE_SIDE = 8192


def check_seed(seed: int, what: str) -> int:
    """``seed`` if it is in [0, :data:`MAX_SEED`]."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what}: {seed} is not a seed (0 to 2**63 - 1)")
    return seed


def check_image_side(side: int | None, what: str) -> int | None:
    """``side`` if it is None or a positive multiple of 8 up to :data:`MAX_IMAGE_SIDE`."""
    if side is not None and not (0 < side <= MAX_IMAGE_SIDE and side % 8 == 0):
        raise ConfigError(f"{what}: {side} is not an image side (a multiple of 8 from 8 to {MAX_IMAGE_SIDE})")
    return side


def torch_device(name: str | None, what: str = "--device") -> torch.device:
    """The device called ``name`` (default: cuda if available, else cpu); one line if it is not a
    device name or not on this machine."""
    import torch

    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise UserError(f"{what}: {str(name)[:40]!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise UserError(f"{what}: {name} is not available here ({torch.cuda.device_count()} CUDA device(s))")
    return device


def environment() -> dict[str, Any]:
    """Device, library versions, CPU count, torch threads and load average of this process."""
    import diffusers
    import numpy
    import torch
    import transformers

    import distar

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "distar": distar.__version__,
        "cpus": os.cpu_count(),
        "torch_threads_per_process": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


#: Model size (parameters) from which several CPU threads may beat one: with ``bench/bench_threads.py``
#: one thread was faster at every UNet size measured, up to 98 M parameters (docs/training.md, "CPU
#: threads"). Below it extra threads only contend: small convolutions run far slower split across cores.
MULTI_THREAD_PARAMETERS = 100_000_000


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def free_cores() -> int:
    """Available cores not already busy: the cores less the one-minute load average (at least 1)."""
    cores = available_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - round(load)))


def configure_threads(requested: int | None = None, *, parameters: int | None = None, device: Any = "cpu") -> int:
    """Set torch's intra-op thread count and return it.

    In order: ``requested`` (a ``--threads`` flag or config key), then ``OMP_NUM_THREADS`` when set,
    else a count fast for the model: one thread below :data:`MULTI_THREAD_PARAMETERS` parameters,
    from there (and when ``parameters`` is unknown) the :func:`free_cores`. On an accelerator the CPU
    only feeds it: one thread. Floating-point results depend on the count (reductions split
    differently), so runs are bit-identical only at the same count.
    """
    import torch

    if requested is not None and requested < 1:
        raise UserError(f"--threads must be at least 1, got {requested}")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested is None and env:
        if not env.isdigit() or int(env) < 1:
            raise UserError(f"OMP_NUM_THREADS must be a positive integer, got {env!r}")
        requested = int(env)
    if requested is None:
        small = parameters is not None and parameters < MULTI_THREAD_PARAMETERS
        requested = 1 if small or torch.device(device).type != "cpu" else free_cores()
    torch.set_num_threads(requested)
    return requested


def count_parameters(*modules: torch.nn.Module | None) -> int:
    """Parameters of ``modules`` (None skipped), each tensor counted once however often it is shared."""
    unique = {id(p): p.numel() for m in modules if m is not None for p in m.parameters()}
    return sum(unique.values())


def stored_parameters(path: str | Path) -> int | None:
    """Parameters in the ``.safetensors`` files under a local folder (or one file), read from their
    headers without loading a weight; None for anything else (e.g. a hub id), a folder without any, or
    one with a file that is not safetensors (its loader says why)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors")) if path.is_dir() else []
    total = 0
    for file in files:
        try:
            with safe_open(file, "pt") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        except (OSError, SafetensorError):
            return None
    return total or None


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch CPU threads (default: ``OMP_NUM_THREADS``, else chosen by model size)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: $OMP_NUM_THREADS, else 1 for small models and every core for large ones)",
    )


def say(line: str) -> None:
    """``line`` on stderr in one write: the processes of a launch share that pipe, and a line written in two
    parts (``print`` writes its newline apart) could run into another process's line."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def report_threads(threads: int, command: str) -> None:
    """The one stderr line a command prints about the thread count it runs with."""
    say(f"distar {command}: {threads} torch thread(s)")


#: Other libraries' notices that say nothing about a distar run: (logger, start of the message).
QUIET_NOTICES: tuple[tuple[str, str], ...] = (
    # transformers' PIL image processors serve distar's reward models; torchvision is not needed
    ("transformers.utils.import_utils", "`CLIPImageProcessor` requires torchvision"),
    ("transformers.utils.import_utils", "`SiglipImageProcessor` requires torchvision"),
    # a one-step generator starts below the top timestep by design (t_init)
    ("diffusers.schedulers.scheduling_lcm", "The first timestep on the custom timestep schedule"),
)


class _DropNotice(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs ``action(module)`` right after module ``name`` is first imported, then steps aside."""

    def __init__(self, name: str, action: Callable[[types.ModuleType], None]) -> None:
        self.name, self.action, self.loader = name, action, None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        self.action(module)


def when_imported(name: str, action: Callable[[types.ModuleType], None]) -> None:
    """``action(module)`` now if ``name`` is imported, else right after its first import (so that a
    command that never loads a library does not pay for importing it)."""
    if name in sys.modules:
        action(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, action))


def quiet_libraries() -> None:
    """Keep other libraries' lines off stderr where they say nothing about the run: drop the
    :data:`QUIET_NOTICES` and turn off diffusers' and transformers' weight-loading progress bars (hub
    download bars stay). For distar's commands and the worker processes of its demos."""
    for name, start in QUIET_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.start == start for f in logger.filters):
            logger.addFilter(_DropNotice(start))
    for library in ("diffusers", "transformers"):
        when_imported(f"{library}.utils.logging", lambda module: module.disable_progress_bar())

