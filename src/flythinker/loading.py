"""Loading a causal LM or a tokenizer from a local folder: checked first, then transformers.

Every load goes through :func:`flythinker.safe_load.check_model_folder` (local folder, safetensors
only, no custom code unless asked), and a folder that transformers cannot read becomes one
:class:`UserError` that names it. The loader of whole models (a FlyThinker folder or a plain
causal LM) is :func:`flythinker.auto.load_model`, built on these two.

    >>> g = load_causal_lm("models/smollm2-135m-instruct", "--model", dtype="bfloat16")  # doctest: +SKIP
    >>> tok = load_tokenizer("models/smollm2-135m-instruct")                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from flythinker.errors import UserError
from flythinker.safe_load import check_model_folder, first_line, load_errors

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def as_dtype(dtype):
    """A torch dtype (or "auto") from a name such as "bfloat16"; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_causal_lm(path: str | os.PathLike, key: str = "--model", *, dtype=None, trust_remote_code: bool = False,
                   attn_implementation: str | None = None, **kwargs):
    """``AutoModelForCausalLM`` from a local folder (safetensors only, nothing downloaded).

    ``key`` names the option or config key in error messages (``model.generator.path``).
    """
    from transformers import AutoModelForCausalLM

    check_model_folder(path, key, trust_remote_code)
    kw = dict(local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)
    if dtype is not None:
        kw["dtype"] = as_dtype(dtype)
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(Path(path).expanduser(), **kw)
    except load_errors() as e:  # a truncated or corrupted weights file, a garbled config
        raise UserError(f"{key}: cannot load {path} ({first_line(e)})") from None


def load_tokenizer(folder: str | os.PathLike, trust_remote_code: bool = False):
    """The tokenizer saved in a model folder, local files only.

    A tokenizer saved as a plain ``tokenizers`` file (``tokenizer_class`` PreTrainedTokenizerFast
    or TokenizersBackend, as ours are) is loaded as exactly that: ``AutoTokenizer`` would pick the
    model type's own class (e.g. Qwen2Tokenizer), which may rebuild its pre-tokenizer.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(folder).expanduser()
    check_model_folder(folder, "tokenizer", trust_remote_code, weights=False)
    cfg_file = folder / "tokenizer_config.json"
    cls_name = json.loads(cfg_file.read_text()).get("tokenizer_class") if cfg_file.is_file() else None
    try:
        if cls_name in ("PreTrainedTokenizerFast", "TokenizersBackend") and (folder / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except load_errors() as e:  # a truncated or garbled tokenizer.json, a missing vocab file
        raise UserError(f"{folder}: cannot load the tokenizer ({first_line(e)})") from None


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
