"""The one loader of trained models: a FlyThinker folder, or a plain causal-LM folder (SFT).

Generation, evaluation, the experiment, the demo and the server all load models through
:func:`load_model`; a plain folder becomes a FlyThinker with λ = 0 (exactly the Generator's
logits and tokens), so every caller decodes the same way. Local files only, safetensors only.

    >>> model, tokenizer = load_model("runs/tiny/final")                 # doctest: +SKIP
    >>> model, tokenizer = load_model("~/.cache/flythinker/models/smollm2-135m-instruct")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from flythinker.errors import UserError
from flythinker.lm import pad_id
from flythinker.loading import load_causal_lm, load_tokenizer
from flythinker.model import FlyThinker
from flythinker.safe_load import check_model_folder
from flythinker.saving import CONFIG_NAME


def is_flythinker_folder(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / CONFIG_NAME).is_file()


def load_model(
    path: str | os.PathLike,
    dtype=None,
    device=None,
    trust_remote_code: bool = False,
    *,
    wrap_plain: bool = True,
    key: str = "--model",
    adapters: bool = False,
):
    """``(model, tokenizer)`` from a FlyThinker folder or a plain transformers causal-LM folder.

    A plain folder gives a :class:`FlyThinker` with λ = 0 over that model (G = R, R never run);
    ``wrap_plain=False`` gives the ``AutoModelForCausalLM`` itself. The tokenizer gets a pad
    token (EOS) when it has none. ``adapters=True`` loads a LoRA run's unmerged adapters over one
    base (``flythinker.adapters``: one base in memory, for shared-base decoding).
    """
    path = Path(path).expanduser()
    if is_flythinker_folder(path):
        weights = "adapters" if adapters else "folders"
        model = FlyThinker.from_pretrained(path, dtype, device, trust_remote_code, weights=weights)
        tok = model.tokenizer
    elif (check_model_folder(path, key, trust_remote_code) / "config.json").is_file():
        g = load_causal_lm(path, key, dtype=dtype, trust_remote_code=trust_remote_code)
        tok = load_tokenizer(path, trust_remote_code)
        model = (
            FlyThinker(generator=g, reasoner=g, lam=0.0, generator_tokenizer=tok, reasoner_tokenizer=tok)
            if wrap_plain
            else g
        )
        if device is not None:
            model.to(device)
    else:
        raise UserError(f"{path}: neither a FlyThinker folder ({CONFIG_NAME}) nor a transformers model (config.json)")
    if tok is None:
        raise UserError(f"{path}: no tokenizer saved with the model")
    pad_id(tok)
    return model.eval(), tok


def load_for_mode(path, mode: str | None, dtype=None, device=None, trust_remote_code: bool = False, say=None):
    """:func:`load_model` for a decoding ``mode``: shared-base decoding of a LoRA run loads its
    unmerged adapters over one base (one base in memory) where the folder has them."""
    from flythinker.adapters import has_adapters

    one_base = mode == "shared_base" and has_adapters(path)
    if one_base and say is not None:
        say(f"weights: one base and two LoRA adapters ({Path(path) / 'adapters'})")
    return load_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code, adapters=one_base)
