"""The process distar runs in: the facts a reported timing or figure depends on."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def environment() -> dict[str, Any]:
    """Device, library versions, CPU count, torch threads and load average of this process."""
    import diffusers
    import numpy
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
