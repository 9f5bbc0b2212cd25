"""Tiny random Qwen2-shaped models and test data paths, imported by the tests (`from tiny_models import ...`).

A plain module, not conftest.py: tests/train has a conftest.py of its own, so importing helpers
from "conftest" would get whichever conftest was imported first."""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GITCOMMITS = SHARED / "data" / "gitcommits"

VOCAB = 97


def tiny_causal_lm(hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = VOCAB, seed: int = 0,
                   init_std: float = 0.02):
    """A randomly initialised Qwen2ForCausalLM small enough for unit tests.

    ``init_std`` is the weights' standard deviation (transformers' ``initializer_range``): the
    default 0.02 leaves the top two logits of a random model often within 1e-5 of each other, so a
    test that compares greedy outputs across processes wants a larger one (decisive choices)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=init_std,
    )
    cfg._attn_implementation = "eager"
    return Qwen2ForCausalLM(cfg).eval()


def tiny_pair(d_g: int = 32, d_r: int = 32, lam: float = 0.5, fusion: str = "prefix", seed: int = 0):
    from flythinker import FlyThinker

    g = tiny_causal_lm(hidden=d_g, seed=seed)
    r = tiny_causal_lm(hidden=d_r, layers=2, seed=seed + 1)
    return FlyThinker(generator=g, reasoner=r, lam=lam, fusion=fusion).eval()


def save_tiny_flythinker(path, tokenizer, init_std: float = 0.02):
    """A tiny FlyThinker (d_G=48, d_R=32) over ``tokenizer``'s vocabulary, saved with it to ``path``."""
    from flythinker import FlyThinker

    n = len(tokenizer)
    g = tiny_causal_lm(hidden=48, vocab=n, seed=0, init_std=init_std)
    r = tiny_causal_lm(hidden=32, vocab=n, seed=1, init_std=init_std)
    for m in (g, r):
        m.config.eos_token_id = tokenizer.eos_token_id
        m.config.pad_token_id = tokenizer.pad_token_id
    FlyThinker(g, r, lam=0.5, generator_tokenizer=tokenizer, reasoner_tokenizer=tokenizer).save_pretrained(path)
    return path


def left_padded_batch(lengths, vocab: int = VOCAB, seed: int = 0, pad: int = 0):
    """Random prompts of the given lengths, left-padded: (input_ids, attention_mask)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n :] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, T - n :] = 1
    return ids, mask
