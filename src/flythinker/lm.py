"""What FlyThinker needs of a causal LM, for any ``AutoModelForCausalLM`` (peft-wrapped or not).

The decoder stack without its LM head (R's logits are never needed), position ids that make
left padding invisible, the KV-cache keyword of the installed transformers, and the pad-token
rule for tokenizers that ship without one.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from flythinker.errors import UserError


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) counted over real tokens only, so left padding changes nothing.

    Same rule as transformers' ``generate`` (pads get position 1; they are masked anyway).

    >>> positions_from_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist()
    [[1, 1, 0, 1], [0, 1, 2, 3]]
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def first_real_column(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's first real token (B,), whichever side the padding is on.

    >>> first_real_column(torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0]])).tolist()
    [2, 0]
    """
    return attention_mask.long().argmax(-1)


def fully_masked_queries(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) True where a query position of a causal pass sees no real key at all (itself and
    every earlier column padding): the rows that CUDA's attention kernels may turn into NaN.

    Left padding gives one per pad column; right padding none.

    >>> fully_masked_queries(torch.tensor([[0, 0, 1], [1, 1, 0]])).tolist()
    [[True, True, False], [False, False, False]]
    """
    return attention_mask.long().cumsum(-1) == 0


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM without its LM head (R's logits are never needed).

    Works for stock ``AutoModelForCausalLM`` models and for peft-wrapped ones (LoRA layers are
    injected in place, so the unwrapped decoder still runs them).
    """
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    if hasattr(model, "get_decoder") and model.get_decoder() is not None:
        return model.get_decoder()
    return model.base_model


def sliding_window(config) -> int | None:
    """The sliding-window length a causal LM's attention uses, or None when it attends to every
    earlier token (Qwen2 ships a window it does not use: ``use_sliding_window`` false)."""
    window = getattr(config, "sliding_window", None)
    used = getattr(config, "use_sliding_window", True) or "sliding_attention" in (
        getattr(config, "layer_types", None) or []
    )
    return window if window and used else None


def device_of(model: nn.Module) -> torch.device:
    """Where a causal LM's input embeddings live (the device its inputs go to)."""
    return model.get_input_embeddings().weight.device


def cache_argument(model) -> str:
    """Name of the KV-cache keyword: transformers ≥ 5.2x says ``cache``, older ``past_key_values``."""
    params = inspect.signature(backbone(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def accepts_logits_to_keep(model) -> bool:
    """Whether ``model(...)`` takes transformers' ``logits_to_keep`` (LM-head logits of the last k
    positions only): looks through DDP / FSDP / DeepSpeed / compile wrappers, peft, and a
    FlyThinker (whose forward hands extra keywords to its Generator)."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if isinstance(getattr(model, "module", None), nn.Module):  # DDP, FSDP, DeepSpeed engine
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif isinstance(getattr(model, "generator", None), nn.Module):  # FlyThinker, its variants, SFTModel
            model = model.generator
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def cache_of(out):
    """The KV cache returned by a forward, under either name."""
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def eos_ids(model=None, tokenizer=None) -> list[int]:
    """Every id that ends a text, the way the model's family defines it: the tokenizer's EOS and
    every id of ``generation_config.eos_token_id`` (a list in Llama 3, Gemma and Qwen chat
    models: ``<|eot_id|>`` beside ``<|end_of_text|>``), in that order, each once.

    >>> from transformers import GenerationConfig
    >>> class M: generation_config = GenerationConfig(eos_token_id=[128001, 128009])
    >>> eos_ids(M())
    [128001, 128009]
    """
    ids: list[int] = []
    sources = [getattr(tokenizer, "eos_token_id", None)]
    gen_cfg = getattr(model, "generation_config", None)
    sources.append(getattr(gen_cfg, "eos_token_id", None))
    for value in sources:
        for i in [value] if isinstance(value, int) else list(value or []):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, set to EOS first where it has none (Llama-style vocabularies ship
    without one; padding is masked everywhere, so any id serves).

    >>> pad_id(tokenizer)  # doctest: +SKIP
    2
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


def check_pair(generator, reasoner, generator_tokenizer=None, reasoner_tokenizer=None) -> None:
    """Refuse a G/R pair that does not share one vocabulary (docs/design.md#one-vocabulary-and-the-invariants).

    With tokenizers, their vocabularies must be identical and both embedding tables must cover
    them (so Qwen2.5-7B with 152064 rows pairs with 1.5B with 151936: same tokenizer). Without
    tokenizers, the two input-embedding tables must have the same number of rows.
    """
    vg = generator.get_input_embeddings().num_embeddings
    vr = reasoner.get_input_embeddings().num_embeddings
    if generator_tokenizer is not None and reasoner_tokenizer is not None:
        a, b = generator_tokenizer.get_vocab(), reasoner_tokenizer.get_vocab()
        if a != b:
            diff = sorted(set(a.items()) ^ set(b.items()))[:3]
            raise UserError(
                f"generator and reasoner tokenizers differ ({len(a)} vs {len(b)} tokens, e.g. {diff}); "
                "FlyThinker needs one shared vocabulary"
            )
        n = len(generator_tokenizer)
        if vg < n or vr < n:
            raise UserError(
                f"embedding tables ({vg} generator rows, {vr} reasoner rows) do not cover the tokenizer's {n} tokens"
            )
    elif vg != vr:
        raise UserError(
            f"generator and reasoner vocabulary sizes differ ({vg} vs {vr}); pass both tokenizers "
            "to check that they share one vocabulary, or use a matching pair"
        )
