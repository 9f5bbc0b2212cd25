"""Randomly initialised Qwen2 models built from numbers, nothing downloaded: the tiny models of the
demo and the tests' configs, the benchmarks' models and the reproduction's base LMs all use this."""

from __future__ import annotations

from flythinker.errors import UserError


def qwen2_config(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int | None, vocab: int,
                 tie: bool = True, *, max_positions: int = 32768, eos: int | None = None, pad: int | None = 0,
                 bos: int | None = None):
    """A ``Qwen2Config`` (``intermediate`` None: 4 × hidden). The default has no EOS, so that a
    benchmark never stops early; pass the tokenizer's ids for a model that is trained or sampled."""
    from transformers import Qwen2Config

    if hidden % heads or heads % kv_heads:
        raise UserError(f"hidden {hidden} must split into {heads} heads, and heads into {kv_heads} KV heads")
    return Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=tie, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )
