"""A FlyThinker's LoRA adapters kept unmerged beside the merged export: one base, two adapters.

A LoRA run whose G and R adapt one base model writes, inside its FlyThinker folder,

    adapters/base/        the base model (transformers folder, safetensors; the tokenizer)
    adapters/generator/   G's adapter (peft folder: adapter_config.json, adapter_model.safetensors)
    adapters/reasoner/    R's adapter

next to the merged ``generator/`` and ``reasoner/`` every loader reads. Loading it with
:func:`load_adapter_pair` builds G and R as two peft models over **one** set of base tensors (R's
module tree is a twin of G's whose parameters are G's own), so the model costs one base in memory
and shared-base decoding (``mode="shared_base"``) runs both rows in one forward.

    >>> model, tok = load_model("runs/lora/final", adapters=True)   # doctest: +SKIP
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from flythinker.errors import UserError

ADAPTERS = "adapters"
WEIGHTS = "adapter_model.safetensors"


def has_adapters(path) -> bool:
    folder = Path(path).expanduser() / ADAPTERS
    return all((folder / name).is_dir() for name in ("base", "generator", "reasoner"))


def base_state(peft_state: dict) -> dict:
    """A peft model's state dict as its base model's: adapters dropped, wrapper names undone."""
    out = {}
    for key, value in peft_state.items():
        if "lora_" in key or "modules_to_save" in key:
            continue
        key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[key] = value
    return out


def shareable(parts: dict) -> bool:
    """Whether G's and R's gathered states (peft naming) hold one base: the same keys, equal tensors."""
    g, r = base_state(parts["generator"]), base_state(parts["reasoner"])
    return g.keys() == r.keys() and all(g[k].shape == r[k].shape and torch.equal(g[k], r[k]) for k in g)


def adapter_parts(models: dict, states: dict) -> dict:
    """``write_model_folder`` parts for ``adapters/``: the base once (from G's state), each peft
    model's adapter through peft's own writer (``lm.save_pretrained(folder, state_dict=...)``)."""
    g = models["generator"]
    return {
        f"{ADAPTERS}/base": (g.get_base_model(), base_state(states["generator"])),
        **{f"{ADAPTERS}/{name}": (models[name], states[name]) for name in ("generator", "reasoner")},
    }


def twin(model: torch.nn.Module) -> torch.nn.Module:
    """A second module tree of ``model`` whose parameters and buffers are ``model``'s own tensors."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def load_adapter_pair(path: Path, dtype=None, trust_remote_code: bool = False, **model_kwargs):
    """(G, R, tokenizer): two peft models over one base loaded once, from ``path/adapters``."""
    from peft import PeftModel

    from flythinker.loading import has_tokenizer, load_causal_lm, load_tokenizer

    folder = Path(path).expanduser() / ADAPTERS
    if not has_adapters(path):
        raise UserError(
            f"{path}: no unmerged adapters ({ADAPTERS}/base, generator, reasoner); it was not a LoRA run "
            "over one base, or was written before they were kept"
        )
    for name in ("generator", "reasoner"):
        if not (folder / name / WEIGHTS).is_file():
            raise UserError(f"{folder / name}: no {WEIGHTS} (only safetensors adapters are loaded)")
    base = load_causal_lm(
        folder / "base", f"{ADAPTERS}/base", dtype=dtype, trust_remote_code=trust_remote_code, **model_kwargs
    )
    other = twin(base)
    g = PeftModel.from_pretrained(base, folder / "generator", is_trainable=False)
    r = PeftModel.from_pretrained(other, folder / "reasoner", is_trainable=False)
    tok = load_tokenizer(folder / "base", trust_remote_code) if has_tokenizer(folder / "base") else None
    return g.eval(), r.eval(), tok
