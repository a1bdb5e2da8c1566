"""What a benchmark ran on, for its results JSON: these machines are noisy, so every number is read
together with the hardware, the library versions and the load while it ran."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine_info(**extra: Any) -> dict[str, Any]:
    """Platform, CPU, Python/torch/numpy versions, torch threads and the load averages now; `extra`
    adds benchmark-specific entries (e.g. the OpenCV version)."""
    import numpy as np
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
            "load_average_1_5_15min": os.getloadavg(), **extra}
