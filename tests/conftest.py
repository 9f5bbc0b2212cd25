"""Shared fixtures: tiny random Qwen2-shaped models (CPU, fp32, seconds to build)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GITCOMMITS = SHARED / "data" / "gitcommits"

VOCAB = 97


def tiny_causal_lm(hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = VOCAB, seed: int = 0):
    """A randomly initialised Qwen2ForCausalLM small enough for unit tests."""
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
    )
    cfg._attn_implementation = "eager"
    return Qwen2ForCausalLM(cfg).eval()


def tiny_pair(d_g: int = 32, d_r: int = 32, lam: float = 0.5, fusion: str = "prefix", seed: int = 0):
    from flythinker import FlyThinker

    g = tiny_causal_lm(hidden=d_g, seed=seed)
    r = tiny_causal_lm(hidden=d_r, layers=2, seed=seed + 1)
    return FlyThinker(generator=g, reasoner=r, lam=lam, fusion=fusion).eval()


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


@pytest.fixture
def gitcommits() -> Path:
    if not GITCOMMITS.is_dir():
        pytest.skip("../shared/data/gitcommits not present")
    return GITCOMMITS


@pytest.fixture(scope="session")
def sample_tokenizer(tmp_path_factory):
    """A small BPE tokenizer trained on the gitcommits sample (cached in a temp dir)."""
    if not GITCOMMITS.is_dir():
        pytest.skip("../shared/data/gitcommits not present")
    from flythinker.data.longlamp import load_examples
    from flythinker.data.tokenizer import train_tokenizer

    exs = load_examples(GITCOMMITS / "sample" / "user_based", split="train")
    texts = [e.input for e in exs] + [e.output for e in exs] + [p["text"] for e in exs for p in e.profile]
    return train_tokenizer(texts, vocab_size=600, cache_dir=tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def saved_tiny_model(tmp_path_factory, sample_tokenizer):
    """A tiny FlyThinker (d_G=48, d_R=32) saved with its tokenizer: the folder path."""
    from flythinker import FlyThinker

    n = len(sample_tokenizer)
    g = tiny_causal_lm(hidden=48, vocab=n, seed=0)
    r = tiny_causal_lm(hidden=32, vocab=n, seed=1)
    for m in (g, r):
        m.config.eos_token_id = sample_tokenizer.eos_token_id
        m.config.pad_token_id = sample_tokenizer.pad_token_id
    model = FlyThinker(g, r, lam=0.5, generator_tokenizer=sample_tokenizer, reasoner_tokenizer=sample_tokenizer)
    path = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(path)
    return path
