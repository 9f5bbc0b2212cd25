"""The engine: accelerate's ``Accelerator`` for one process or one of ``accelerate launch`` /
``torchrun``'s, and the one thing FlyThinker must do before a model is sharded (ρ).

    >>> acc = make_accelerator(cfg)            # doctest: +SKIP
    >>> if is_sharded(acc): cache_rho(model)   # before acc.prepare(model)  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch

from flythinker.devices import pick_device
from flythinker.errors import UserError


def make_accelerator(cfg, out=None):
    """accelerate's engine for this process: one process, or one of ``accelerate launch`` /
    ``torchrun``'s (DDP, FSDP, DeepSpeed from the launch config; gloo on CPU-only machines)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        # accelerate keeps its settings in process-wide singletons; a second run in the same
        # process (tests, notebooks, the demo) with other settings would be refused
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    # the command's --device (else the GPU when there is one); torchrun on a machine without GPUs:
    # accelerate only sets up gloo when told "cpu"
    device = pick_device()
    cpu = device.type == "cpu"
    if cpu and world > 1 and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        # DeepSpeed on CPUs (DS_ACCELERATOR=cpu): accelerate takes its DeepSpeed path only when not told
        # "cpu", and the processes then talk over gloo
        from accelerate.state import PartialState

        PartialState(cpu=False, backend="gloo")
        cpu = False
    if not cpu and world <= 1:
        torch.cuda.set_device(device)  # --device cuda:N: accelerate's one process uses the current GPU
    mixed = "bf16" if cfg.train.precision == "bf16" else "no"
    from flythinker.train.tracking import accelerator_kwargs

    kw = accelerator_kwargs(cfg, out)
    if cfg.train.loss_normalization == "tokens":
        # token_windows reads each accumulation window ahead, so the loader's end comes one window
        # early; count micro-batches instead (EpochSampler makes every epoch whole windows)
        from accelerate.utils import GradientAccumulationPlugin

        kw["gradient_accumulation_plugin"] = GradientAccumulationPlugin(num_steps=1, sync_with_dataloader=False)
    acc = Accelerator(mixed_precision=mixed, cpu=cpu, step_scheduler_with_optimizer=False, **kw)
    if acc.num_processes != world:
        raise UserError(
            f"launched as {world} processes but accelerate set up {acc.num_processes}; "
            "check the launch command (CPU runs: ACCELERATE_USE_CPU=1)"
        )
    # known only now (it depends on the device count); read by prepare() (DeepSpeed "auto")
    acc.gradient_accumulation_steps = cfg.train.accumulation(acc.num_processes)
    return acc


def is_sharded(accelerator) -> bool:
    """FSDP or ZeRO-3: parameters live in shards outside forward."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        return True
    return state.distributed_type == DistributedType.DEEPSPEED and state.deepspeed_plugin.zero_stage == 3


def cache_rho(model) -> None:
    """Fix ρ from G's whole embedding table (ZeRO-3/FSDP shards it; a shard reads as empty)."""
    w = model.generator.get_input_embeddings().weight
    if hasattr(w, "ds_id"):  # ZeRO-3 with zero3_init: gather the table once
        import deepspeed

        with deepspeed.zero.GatheredParameters([w]):
            model.cache_rho()
    else:
        model.cache_rho()
