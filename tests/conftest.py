"""Shared fixtures (the helpers they use live in tiny_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import GITCOMMITS, save_tiny_flythinker

# The invariant tests' devices: the CPU always, and the GPU where there is one (`pytest -m gpu`
# runs those alone; on a machine without CUDA they are collected and skipped).
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device an invariant test runs on: ``cpu``, and ``cuda`` (marked ``gpu``) when present."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _command_device_does_not_leak(monkeypatch):
    """A command's --device is recorded in $FLYTHINKER_DEVICE; no test leaves it to the next."""
    monkeypatch.setenv("FLYTHINKER_DEVICE", "")


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
