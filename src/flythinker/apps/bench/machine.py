"""What the benchmarks record about the machine they ran on (load, cores, versions, memory
bandwidth) and about the models they time (bytes read per token)."""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
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

    return {
        "cpus": all_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


@contextmanager
def _threads(n: int | None):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def weight_bytes(model) -> dict:
    """Bytes each model reads per decoded token: G all its weights (the LM head reads the whole
    table), R all but its embedding table (a lookup reads one row; R runs no LM head)."""

    def unique(params):
        return sum({p.data_ptr(): p.numel() * p.element_size() for p in params}.values())

    g, r = model.generator, model.reasoner
    table = r.get_input_embeddings().weight
    r_bytes = unique(p for p in r.parameters() if p.data_ptr() != table.data_ptr())
    head = r.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != table.data_ptr():
        r_bytes -= head.weight.numel() * head.weight.element_size()
    return {"generator": unique(g.parameters()), "reasoner": r_bytes}


def measure_bandwidth(mib: int = 256, repeats: int = 5) -> dict:
    """Memory bandwidth of this machine in GB/s (a copy reads and writes every byte), one thread
    and all threads: the floor of batch-1 decoding, whose every token reads every weight."""
    import torch

    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    out = {}
    for key, n in (("one_thread", 1), ("all_threads", all_threads())):
        with _threads(n):
            dst.copy_(src)  # warm-up: pages touched
            t0 = time.perf_counter()
            for _ in range(repeats):
                dst.copy_(src)
            out[f"{key}_gb_s"] = 2 * src.numel() * 4 * repeats / (time.perf_counter() - t0) / 1e9
    return out
