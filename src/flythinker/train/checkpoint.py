"""Checkpoints: resumable training state, and model folders for use after training.

A run folder holds two kinds of output::

    RUN/checkpoints/step-00000120/   resumable: accelerate's save_state (model.safetensors,
                                     optimizer, RNG states of every process) + trainer_state.json
                                     (step, epoch, data position, scheduler, best dev loss)
    RUN/best/, RUN/final/            the model: a FlyThinker folder (generator/ reasoner/
                                     flythinker.json, loadable with FlyThinker.from_pretrained)
                                     or, for SFT, a plain transformers folder; LoRA merged in

Everything is written into a hidden temporary folder and renamed into place (``os.replace``),
so a crash at any moment leaves either the previous complete folder or the new complete one —
never a half-written folder that a later ``--resume`` could pick up. Files are read back with
safetensors, JSON, and ``torch.load(weights_only=True)`` (accelerate's loader) only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from flythinker.errors import UserError
from flythinker.saving import remove_dir, replace_dir, write_model_folder

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary and foreign folders are ignored).

    >>> list_checkpoints("runs/tiny")  # doctest: +SKIP
    [PosixPath('runs/tiny/checkpoints/step-00000010'), PosixPath('runs/tiny/checkpoints/step-00000020')]
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, keep_last: int) -> Path | None:
    """Write a resumable checkpoint for optimizer step ``step``; keep the newest ``keep_last``
    (0: write none, return None).

    Collective: every process calls it (each saves its RNG state; ZeRO/FSDP save shards).
    ``state`` is the trainer's JSON-able bookkeeping, written last, into the temporary folder.
    """
    if keep_last == 0:
        return None
    root = run_dir / CHECKPOINTS
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # debris of a crash during an earlier save
        for debris in root.glob(".step-*.del"):  # ... or during an earlier remove_dir
            shutil.rmtree(debris, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(tmp / STATE_FILE, state)
        replace_dir(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            remove_dir(old)  # never a folder that lists as a checkpoint but has lost some files
    accelerator.wait_for_everyone()
    return final


# changing these between an interrupted run and its resumption would change what the
# checkpoint means (other weights, other data order)
_RESUME_FIXED = ("model", "data", "train.batch_size", "train.grad_accum", "train.effective_batch_size", "train.seed")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def check_same_setup(saved: dict, current: dict, ckpt: Path) -> None:
    """Refuse to resume when what the checkpoint means changed (other weights or data order)."""
    old, new = _flat(saved), _flat(current)
    for key in sorted(set(old) | set(new)):
        if any(key == f or key.startswith(f + ".") for f in _RESUME_FIXED) and old.get(key) != new.get(key):
            raise UserError(
                f"cannot resume from {ckpt}: {key} was {old.get(key)!r}, now {new.get(key)!r} "
                "(use --overwrite to start a new run)"
            )


_STATE_KEYS = ("step", "epoch", "step_in_epoch", "scheduler", "config")


def _damaged(path: Path, problem: str) -> UserError:
    # a checkpoint is renamed into place only when complete, so this is damage after the fact
    return UserError(
        f"checkpoint {path} is damaged ({problem}); delete that folder to resume from the "
        "checkpoint before it, or start over with --overwrite"
    )


def read_state(path: Path) -> dict:
    """The trainer state of a checkpoint (step, epoch, data position, scheduler, config, ...)."""
    try:
        state = json.loads((path / STATE_FILE).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(path, f"{STATE_FILE}: {e}") from None
    if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
        raise _damaged(path, f"{STATE_FILE} lacks {', '.join(_STATE_KEYS)}")
    return state


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore model, optimizer and RNG states saved by :func:`save_checkpoint`; returns the
    trainer state."""
    import pickle

    from flythinker.safe_load import check_safetensors, first_line, load_errors

    state = read_state(path)
    try:
        check_safetensors(path, "checkpoint")
        accelerator.load_state(str(path))  # accelerate loads with torch.load(weights_only=True)
    except UserError as e:
        raise _damaged(path, str(e).removeprefix("checkpoint: ")) from None
    except (*load_errors(), pickle.UnpicklingError, EOFError) as e:  # a truncated or overwritten file
        raise _damaged(path, first_line(e)) from None
    return state


# --- model folders ----------------------------------------------------------------------------


def _merge_lora(state: dict, peft_model) -> dict:
    """Fold every adapter of a peft model's state dict into its base weights, with peft's own merge
    (``merge_and_unload``: linear and Conv1D LoRA, LoRA on embeddings, DoRA, LoRA biases, ...).

    Computed on a copy whose tensors are those of ``state``, so the live (training) weights are
    untouched and the same code serves a ZeRO-3/FSDP state dict gathered on the main process; the
    copy's structure is made on the meta device, so no weights are duplicated. An adapter peft
    cannot merge is one clear error, never a silently dropped key.
    """
    import copy

    memo = {
        id(t): torch.nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=False)
        for t in peft_model.parameters()
    }
    memo.update({id(b): torch.empty_like(b, device="meta") for b in peft_model.buffers()})
    shell = copy.deepcopy(peft_model, memo)
    shell.load_state_dict(state, strict=False, assign=True)
    missing = [n for n, p in shell.named_parameters() if p.is_meta]
    if missing:
        raise UserError(f"the state dict to export lacks {len(missing)} weights of the model (e.g. {missing[:3]})")
    try:
        merged = shell.merge_and_unload(safe_merge=True)
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
        raise UserError(
            f"cannot merge the LoRA adapters into the exported model ({e}); export them unmerged "
            "with peft's save_pretrained instead"
        ) from None
    clean = {k: v for k, v in merged.state_dict().items() if not v.is_meta}
    left = sorted(k for k in clean if "lora_" in k)
    if left:
        raise UserError(
            f"the exported model would keep unmerged adapter weights ({', '.join(left[:3])}); refusing to drop them"
        )
    return clean


def _submodule_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}


def export_model(accelerator, model, path: Path, tokenizer=None) -> Path | None:
    """Write the trained model as a folder others can load (collective; the main process writes).

    FlyThinker runs give a FlyThinker folder (``FlyThinker.from_pretrained``); SFT runs a plain
    transformers folder of the Generator (``AutoModelForCausalLM.from_pretrained``). LoRA
    adapters are merged. Works for DDP, FSDP and DeepSpeed (the full state dict is gathered).

    >>> export_model(accelerator, model, Path("runs/tiny/final"), tokenizer)  # doctest: +SKIP
    """
    state = accelerator.get_state_dict(model)  # gathers shards; must run on every process
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    from transformers.utils import logging as hf_logging

    unwrapped = accelerator.unwrap_model(model)
    state = {k: v.detach().cpu() for k, v in state.items()}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar inside the training bar
    try:
        _write_model(unwrapped, state, path, tokenizer)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    accelerator.wait_for_everyone()
    return path


def _write_model(unwrapped, state: dict, path: Path, tokenizer) -> None:
    """The gathered state dict as a model folder: LoRA merged, through the one folder writer; a
    FlyThinker whose two adapters share one base also gets them unmerged (``adapters/``)."""
    from flythinker import adapters
    from flythinker.model import FlyThinker

    is_flythinker = isinstance(unwrapped, FlyThinker)
    parts, peft_models, peft_states = {}, {}, {}
    for name in ("generator", "reasoner") if is_flythinker else ("generator",):
        lm, sub = getattr(unwrapped, name), _submodule_state(state, name)
        if hasattr(lm, "peft_config"):
            peft_models[name], peft_states[name] = lm, sub
            sub, lm = _merge_lora(sub, lm), lm.get_base_model()
        parts[name if is_flythinker else ""] = (lm, sub)
    if len(peft_states) == 2 and adapters.shareable(peft_states):  # one base: keep it and both adapters too
        parts.update(adapters.adapter_parts(peft_models, peft_states))
    write_model_folder(
        path,
        parts,
        config=unwrapped.fusion_config() if is_flythinker else None,
        fusion_state=_submodule_state(state, "fusion") if is_flythinker else None,
        tokenizer=tokenizer,
        overwrite=True,
    )


def load_trained(path: str | os.PathLike, **kwargs):
    """The model of a folder written by :func:`export_model`: a FlyThinker, or the SFT Generator
    itself (``flythinker.auto.load_model`` without wrapping).

    >>> model = load_trained("runs/tiny/final")  # doctest: +SKIP
    """
    from flythinker.auto import load_model

    return load_model(path, wrap_plain=False, **kwargs)[0]


def state_fingerprint(model: torch.nn.Module) -> float:
    """A cheap checksum of the trainable weights (sum of per-tensor sums, in float64): equal on
    every DDP replica when they are in sync."""
    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if p.requires_grad and p.numel():
            total += p.detach().double().sum().cpu()
    return float(total)
