"""Which device a command runs its models on: the GPU when one is present, else the CPU.

Every command that runs a model calls :func:`use_device` with its ``--device`` value once, at
the start: it checks the value, says which device it will use, and records it in the
environment (``FLYTHINKER_DEVICE``) so that the library code a command drives (the experiment's
cells, the trainer, the probe) picks the same one through :func:`pick_device`.

    >>> pick_device("cpu")
    device(type='cpu')
    >>> pick_device("tpu")
    Traceback (most recent call last):
    ...
    flythinker.errors.UserError: --device: expected cpu, cuda or cuda:N, got 'tpu'
"""

from __future__ import annotations

import os
import re

import torch

from flythinker.errors import UserError

ENV = "FLYTHINKER_DEVICE"
_SPEC = re.compile(r"^(cpu|cuda|cuda:\d+)$")


def pick_device(spec: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``spec`` if given, else ``$FLYTHINKER_DEVICE``, else ``cuda`` (this
    process's GPU under ``torchrun``: ``cuda:$LOCAL_RANK``) when CUDA is available, else ``cpu``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = spec or os.environ.get(ENV) or None
    if spec in (None, "auto"):
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if not _SPEC.match(str(spec)):
        raise UserError(f"--device: expected cpu, cuda or cuda:N, got {spec!r}")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {spec}: CUDA is not available here (torch {torch.__version__}); use --device cpu"
            )
        if spec == "cuda":
            spec = f"cuda:{int(os.environ.get('LOCAL_RANK', torch.cuda.current_device()))}"
        index = int(spec.split(":")[1])
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(spec)


def describe(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def use_device(spec: str | None = None, say=print) -> torch.device:
    """Pick the device for a command (see :func:`pick_device`), say which, and make it the one the
    library code under this command uses (``$FLYTHINKER_DEVICE``)."""
    device = pick_device(spec)
    os.environ[ENV] = str(device)
    if say is not None:
        say(f"device: {describe(device)}")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its first parameter's device (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch's tensors moved to ``device`` (other values kept as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
