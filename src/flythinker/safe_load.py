"""Checks run before transformers reads a model folder: local, safetensors, no foreign code.

Models load from local folders only (``local_files_only=True``), weights from safetensors only
(``use_safetensors=True``; a pickle file can run arbitrary code when unpickled), and a folder
whose config points at its own modeling code (``auto_map``) is refused unless the user passes
``trust_remote_code``. Each refusal is a :class:`UserError` that says what to do instead.

    >>> check_model_folder("Qwen/Qwen2.5-3B", "--model")  # doctest: +SKIP
    flythinker.errors.UserError: --model Qwen/Qwen2.5-3B: no such local folder; it looks like a ...
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from flythinker.errors import UserError

# "owner/name" with hub-legal characters, not an explicit relative or absolute path
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def load_errors() -> tuple[type[BaseException], ...]:
    """What a broken folder makes transformers / safetensors / tokenizers raise while loading
    (a truncated or corrupted file, bad JSON, mismatched shapes): caught and named by the caller."""
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, KeyError, SafetensorError)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def missing_path_error(path: str | os.PathLike, key: str) -> UserError:
    """A path that is not on disk: say models load from local folders (and spot hub ids)."""
    p = str(path)
    if _HUB_ID.match(p) and not Path(p.split("/")[0]).exists():  # "runs/x" with a runs/ here is local
        return UserError(
            f"{key} {p}: no such local folder; it looks like a Hugging Face hub id, but FlyThinker "
            f"loads models from local folders only and never downloads (fetch it first, e.g. "
            f"`huggingface-cli download {p} --local-dir models/{p.split('/')[-1]}`, and pass that folder)"
        )
    return UserError(
        f"{key} {p} does not exist (models load from local folders only; relative paths are read from {Path.cwd()})"
    )


def _read_json(file: Path, key: str) -> dict:
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{key}: {file} is not valid JSON ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{key}: {file} is not a JSON object")
    return data


def check_model_folder(
    folder: str | os.PathLike, key: str, trust_remote_code: bool = False, weights: bool = True
) -> Path:
    """Refuse a model folder FlyThinker must not load, before anything in it is read by transformers.

    Missing (a hub id gets its own message), pickle weights without safetensors, a damaged
    safetensors header, or custom code (``auto_map`` in config.json or tokenizer_config.json)
    without ``trust_remote_code``. ``weights=False`` checks a tokenizer-only folder.

    >>> check_model_folder("runs/tiny/final/generator", "model.generator.path")  # doctest: +SKIP
    PosixPath('runs/tiny/final/generator')
    """
    path = Path(folder).expanduser()
    if not path.exists():
        raise missing_path_error(folder, key)
    if not path.is_dir():
        raise UserError(f"{key} {path}: not a folder (a model is a folder with config.json and *.safetensors)")
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file() and "auto_map" in _read_json(file, key) and not trust_remote_code:
            raise UserError(
                f"{key}: {file} names custom model code (auto_map), which is not run by default; "
                "pass --trust-remote-code (model.*.trust_remote_code: true in a config) "
                "only if you trust that folder's Python files"
            )
    if weights:
        check_safetensors(path, key)
    if weights and not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for pat in PICKLE_WEIGHTS for p in path.glob(pat))
        if pickles:
            raise UserError(
                f"{key}: {path} holds pickle weights only ({', '.join(pickles[:3])}); FlyThinker "
                "loads safetensors only, since unpickling can run code (convert them with "
                "transformers: load with use_safetensors=False in a trusted session, then "
                "save_pretrained(..., safe_serialization=True))"
            )
    return path


def check_safetensors(folder: Path, key: str) -> None:
    """Open the header of every ``*.safetensors`` file (cheap: no tensor is read), so a truncated
    or overwritten file is named here instead of failing somewhere inside transformers."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            raise UserError(f"{key}: {file} is damaged ({first_line(e)})") from None
