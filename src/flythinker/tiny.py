"""Randomly initialised causal LMs built from numbers, nothing downloaded: the one builder of the
demo's and the tests' tiny models, the benchmarks' models and the reproduction's base LMs.

Qwen2 (untied or tied embeddings) is the default family; a tied-embedding Llama stands in for
SmolLM2-shaped models in the tests.

    >>> g = random_lm(qwen2_config(64, 2, 4, 2, None, 1000), seed=0)      # doctest: +SKIP
    >>> r = random_lm(llama_config(32, 2, 4, 2, None, 1000), seed=1)      # doctest: +SKIP
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from flythinker.errors import UserError


def _config(
    cls,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int | None,
    vocab: int,
    tie: bool,
    max_positions: int,
    eos,
    pad,
    bos,
    init_std: float,
    attn: str | None,
):
    if hidden % heads or heads % kv_heads:
        raise UserError(f"hidden {hidden} must split into {heads} heads, and heads into {kv_heads} KV heads")
    cfg = cls(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        initializer_range=init_std,
    )
    if attn:
        cfg._attn_implementation = attn
    return cfg


def qwen2_config(
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int | None,
    vocab: int,
    tie: bool = True,
    *,
    max_positions: int = 32768,
    eos: int | None = None,
    pad: int | None = 0,
    bos: int | None = None,
    init_std: float = 0.02,
    attn: str | None = None,
):
    """A ``Qwen2Config`` (``intermediate`` None: 4 × hidden). The default has no EOS, so that a
    benchmark never stops early; pass the tokenizer's ids for a model that is trained or sampled.
    ``init_std`` is transformers' ``initializer_range``; ``attn`` its attention implementation."""
    from transformers import Qwen2Config

    return _config(
        Qwen2Config,
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        vocab,
        tie,
        max_positions,
        eos,
        pad,
        bos,
        init_std,
        attn,
    )


def llama_config(
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int | None,
    vocab: int,
    tie: bool = True,
    *,
    max_positions: int = 8192,
    eos: int | None = None,
    pad: int | None = None,
    bos: int | None = None,
    init_std: float = 0.02,
    attn: str | None = None,
):
    """A ``LlamaConfig`` shaped like SmolLM2 (tied embeddings, no pad token by default)."""
    from transformers import LlamaConfig

    return _config(
        LlamaConfig,
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        vocab,
        tie,
        max_positions,
        eos,
        pad,
        bos,
        init_std,
        attn,
    )


def random_lm(config, seed: int = 0, *, dtype: torch.dtype | None = None, device=None, keep_rng: bool = False):
    """A causal LM of ``config`` with seeded random weights (fp32, then cast to ``dtype``).

    ``device`` builds it there directly (``"meta"`` for shapes only); ``keep_rng`` leaves the
    global RNG stream as it was (a training run's data order must not depend on the model).
    """
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]) if keep_rng else nullcontext():
        torch.manual_seed(seed)
        with torch.device(device) if device is not None else nullcontext():
            model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype) if dtype is not None else model


def random_pair(g_config, r_config, lam: float, device="cpu", dtype=None, seed: int = 0):
    """FlyThinker over two randomly initialised models (seeds ``seed``, ``seed + 1``), built on ``device``."""
    from flythinker.model import FlyThinker

    g = random_lm(g_config, seed, dtype=dtype, device=device).eval()
    r = random_lm(r_config, seed + 1, dtype=dtype, device=device).eval()
    return FlyThinker(generator=g, reasoner=r, lam=lam).eval()


# Decoder families of transformers, as tiny random configs of one shape (tests, docs/families.md's table).
# Sliding-window families get a window of 4 tokens, so a short test decodes past it.
FAMILIES = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "granite",
    "stablelm",
    "gpt_neox",
    "cohere",
    "gpt2",
)
SLIDING_WINDOW = 4


def family_config(
    family: str,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 211,
    *,
    init_std: float = 0.02,
    attn: str | None = "eager",
    eos: int | None = 2,
    pad: int | None = 0,
    bos: int | None = 1,
    max_positions: int = 256,
):
    """A tiny config of one of :data:`FAMILIES` (``AutoConfig.for_model``), sized alike across
    families; sliding-window families (Mistral, Gemma 2, Gemma 3) get a window of
    :data:`SLIDING_WINDOW` tokens, Gemma 2 keeps its attention and final-logit soft-capping."""
    from transformers import AutoConfig

    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    common = dict(vocab_size=vocab, initializer_range=init_std, eos_token_id=eos, pad_token_id=pad, bos_token_id=bos)
    if family == "gpt2":
        kw = dict(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions)
    else:
        kw = dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=max_positions,
        )
        if family != "gpt_neox":
            kw["num_key_value_heads"] = kv_heads
        if family.startswith("gemma") or family == "qwen3":
            kw["head_dim"] = hidden // heads
        if family in ("mistral", "gemma2", "gemma3_text"):
            kw["sliding_window"] = SLIDING_WINDOW
        if family == "gemma3_text":
            kw["layer_types"] = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (
                layers % 2
            )
    cfg = AutoConfig.for_model(family, **common, **kw)
    if attn:
        cfg._attn_implementation = attn
    return cfg
