"""Loading a causal LM or a tokenizer from a local folder: checked first, then transformers.

Every load goes through :func:`flythinker.safe_load.check_model_folder` (local folder, safetensors
only, no custom code unless asked), and a folder that transformers cannot read becomes one
:class:`UserError` that names it. The loader of whole models (a FlyThinker folder or a plain
causal LM) is :func:`flythinker.auto.load_model`, built on these two.

    >>> g = load_causal_lm("models/smollm2-135m-instruct", "--model", dtype="bfloat16")  # doctest: +SKIP
    >>> tok = load_tokenizer("models/smollm2-135m-instruct")                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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


def load_causal_lm(
    path: str | os.PathLike,
    key: str = "--model",
    *,
    dtype=None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    num_layers: int | None = None,
    **kwargs,
):
    """``AutoModelForCausalLM`` from a local folder (safetensors only, nothing downloaded).

    ``key`` names the option or config key in error messages (``model.generator.path``).
    ``num_layers`` keeps only the model's first k decoder layers (the final norm and LM head
    stay): a cheaper Reasoner cut from the same base; the other layers' weights are not loaded.
    """
    from transformers import AutoModelForCausalLM

    check_model_folder(path, key, trust_remote_code)
    refuse_non_causal(path, key)
    kw = dict(local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)
    if dtype is not None:
        kw["dtype"] = as_dtype(dtype)
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    if num_layers is not None:
        kw["config"] = first_layers_config(path, num_layers, key, trust_remote_code)
    try:
        if num_layers is None:
            return AutoModelForCausalLM.from_pretrained(Path(path).expanduser(), **kw)
        with _quiet_load_report():  # it would list every weight of the layers left out as unexpected
            model, info = AutoModelForCausalLM.from_pretrained(Path(path).expanduser(), output_loading_info=True, **kw)
    except load_errors() as e:  # a truncated or corrupted weights file, a garbled config
        raise UserError(f"{key}: cannot load {path} ({first_line(e)})") from None
    left_out = re.compile(r"(^|\.)layers\.(\d+)\.")
    odd = sorted(
        k for k in info.get("unexpected_keys", ()) if not ((m := left_out.search(k)) and int(m[2]) >= num_layers)
    )
    if info.get("missing_keys") or info.get("mismatched_keys") or odd:
        raise UserError(
            f"{key}: the first {num_layers} layers of {path} do not load cleanly (missing: "
            f"{sorted(info.get('missing_keys', []))[:5]}, mismatched: {list(info.get('mismatched_keys', []))[:5]}, "
            f"unexpected: {odd[:5]})"
        )
    return model


# families whose models read their whole input at once: a causal-LM head on them is not a decoder
ENCODER_ONLY = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "electra",
    "deberta",
    "deberta-v2",
    "albert",
    "camembert",
    "modernbert",
}


def refuse_non_causal(path: str | os.PathLike, key: str = "--model") -> None:
    """One clear line, before anything is loaded, for a folder that holds no decoder-only causal LM:
    an encoder-decoder model (T5, BART, ...) or an encoder (BERT, ...). G and R must each read the
    text left to right, one token after another."""
    file = Path(path).expanduser() / "config.json"
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # check_model_folder and transformers say what is wrong with it
    kind = cfg.get("model_type", "?") if isinstance(cfg, dict) else "?"
    if isinstance(cfg, dict) and cfg.get("is_encoder_decoder"):
        raise UserError(
            f"{key}: {path} is an encoder-decoder model ({kind}); FlyThinker's Generator and Reasoner "
            "must be decoder-only causal LMs"
        )
    if kind in ENCODER_ONLY and not cfg.get("is_decoder"):
        raise UserError(
            f"{key}: {path} is an encoder ({kind}), not a causal LM; FlyThinker's Generator and Reasoner "
            "must be decoder-only causal LMs"
        )


@contextlib.contextmanager
def _quiet_load_report():
    """transformers' load report at error level only, for one load whose report is checked here."""
    import logging

    log = logging.getLogger("transformers.modeling_utils")
    before = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(before)


def first_layers_config(
    path: str | os.PathLike, num_layers: int, key: str = "--model", trust_remote_code: bool = False
):
    """The folder's model config cut to its first ``num_layers`` decoder layers.

    Per-layer lists the config carries (``layer_types``: full or sliding attention per layer) are
    cut with it; a config without ``num_hidden_layers`` is refused.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            Path(path).expanduser(), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except load_errors() as e:
        raise UserError(f"{key}: cannot read the model config in {path} ({first_line(e)})") from None
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise UserError(f"{key}: num_layers needs a config with num_hidden_layers; {path} has none")
    if not 1 <= num_layers <= n:
        raise UserError(f"{key}: num_layers must be between 1 and the model's {n} layers, got {num_layers}")
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:num_layers]
    return config


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
