"""What the benchmarks record about the machine they ran on (load, cores, versions)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def loadavg() -> str | None:
    """/proc/loadavg (None where there is none): a busy machine makes every timing slower."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


def all_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_info() -> dict:
    import torch

    return {"cpus": all_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}
