"""Writing model folders: the one writer of FlyThinker and plain causal-LM folders, atomically.

A FlyThinker folder is ``generator/`` and ``reasoner/`` (standard transformers folders,
safetensors only), ``flythinker.json`` (λ, fusion mode, variant) and, for ``fusion="linear"``,
``fusion.safetensors``; an SFT model is a plain transformers folder. Every folder is written
beside its destination and renamed into place, so a crash never leaves a half-written model.

    >>> write_model_folder("runs/m", {"generator": (g, None), "reasoner": (r, None)},
    ...                    config=model.fusion_config(), tokenizer=tok)  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flythinker.errors import UserError

CONFIG_NAME = "flythinker.json"
FUSION_WEIGHTS = "fusion.safetensors"
FORMAT_VERSION = 1


def staging_dir(path: Path) -> Path:
    """A new empty folder beside ``path`` to write it in before :func:`replace_dir`.

    Its name carries this host and process (``.NAME.tmp-HOST-PID-xxxx``), so the staging folders
    that a killed writer left behind (a model's worth of disk each) are recognised and removed
    here; those of a live process, or of another host, are left alone.
    """
    import socket

    host = socket.gethostname().replace("-", "_")
    prefix = f".{path.name}.tmp-{host}-"
    for old in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = old.name[len(prefix) :].split("-", 1)[0]
        if old.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=path.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_dir(path: Path) -> None:
    """Delete a folder so that a kill part-way leaves no half-deleted folder under its name: it
    is renamed to ``.NAME.del`` (atomic) first, and only then deleted."""
    path = Path(path)
    gone = path.with_name(f".{path.name}.del")
    shutil.rmtree(gone, ignore_errors=True)  # debris of a kill during an earlier deletion
    os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; an old ``dst`` is deleted only after the rename."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)  # debris of a crash during an earlier swap
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def write_model_folder(
    path: str | os.PathLike,
    parts: dict,
    *,
    config: dict | None = None,
    fusion_state: dict | None = None,
    tokenizer=None,
    overwrite: bool = False,
) -> Path:
    """Write causal LMs (and a FlyThinker config) into ``path``, atomically.

    ``parts`` maps a sub-folder name to ``(model, state_dict or None)``: ``{"generator": ...,
    "reasoner": ...}`` for a FlyThinker, ``{"": (g, None)}`` for a plain folder. A state dict
    (e.g. LoRA merged, or gathered from shards) replaces the model's own weights. ``config``
    (``FlyThinker.fusion_config()``) makes it a FlyThinker folder; ``fusion_state`` holds the
    linear fusion's weights. An existing non-empty ``path`` is refused unless ``overwrite``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} already exists and is not empty (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(path)
    try:
        for name, (lm, state) in parts.items():
            folder = tmp / name if name else tmp
            kwargs = {} if state is None else {"state_dict": state}
            lm.save_pretrained(folder, safe_serialization=True, **kwargs)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
        if config is not None:
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if fusion_state:
            save_file({k: v.detach().cpu().contiguous() for k, v in fusion_state.items()}, str(tmp / FUSION_WEIGHTS))
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@dataclass(frozen=True)
class FolderConfig:
    """A FlyThinker folder's ``flythinker.json``, read once: what builds its fusion and its class."""

    lam: float
    fusion: str
    variant: str = "flythinker"
    gate: str = "none"
    center_latent: bool = False
    standardize_latent: bool = False

    @classmethod
    def read(cls, path: Path) -> FolderConfig:
        from flythinker.safe_load import missing_path_error

        cfg_file = path / CONFIG_NAME
        if not path.exists():
            raise missing_path_error(path, "model")
        if not cfg_file.is_file():
            raise UserError(f"{path}: not a FlyThinker folder (no {CONFIG_NAME})")
        try:
            cfg = json.loads(cfg_file.read_text())
            extras = {k: cfg[k] for k in ("variant", "gate", "center_latent", "standardize_latent") if k in cfg}
            return cls(lam=cfg["lam"], fusion=cfg["fusion"], **extras)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{cfg_file}: unreadable FlyThinker config ({e})") from None

    def restore(self, fusion, path: Path) -> None:
        """The saved fusion's extras onto a freshly built one: the centred (or standardised) latent's
        switch, then its weights (linear map, gate, μ, σ) when it has any."""
        if self.center_latent:
            fusion.enable_centering(standardize=self.standardize_latent)
        if fusion.state_dict():
            fusion.load_state_dict(read_fusion_weights(path))


def read_fusion_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    from flythinker.safe_load import first_line, load_errors

    wfile = path / FUSION_WEIGHTS
    if not wfile.is_file():
        raise UserError(f"{path}: the fusion has weights (linear map, gate or μ) but {FUSION_WEIGHTS} is missing")
    try:
        return load_file(str(wfile))
    except load_errors() as e:
        raise UserError(f"{wfile}: cannot load the fusion weights ({first_line(e)})") from None
