"""Shared fixtures (the helpers they use live in tiny_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import GITCOMMITS, save_tiny_flythinker


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
    return save_tiny_flythinker(tmp_path_factory.mktemp("model") / "tiny", sample_tokenizer)
