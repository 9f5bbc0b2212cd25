"""Train tests: one torch thread (the CI machine is small and shared; two threads fighting
other processes were 20× slower here) and a private tokenizer cache."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FLYTHINKER_CACHE", str(tmp_path_factory.getbasetemp() / "flythinker-cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for subprocesses
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
