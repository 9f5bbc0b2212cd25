"""What only a GPU can show: bf16 decoders agree, and every path runs on the model's device.

Marked ``gpu``: collected everywhere, skipped without CUDA (`pytest -m gpu` on a GPU machine;
`scripts/gpu_check.sh` runs them). The training ones live in tests/train/test_padding.py."""

from __future__ import annotations

import pytest
import torch
from tiny_models import fallbacks, left_padded_batch, tiny_pair

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

FREE = dict(eos_token_id=[], pad_token_id=0)


def test_bf16_concurrent_streams_equal_sequential_and_lambda_zero_is_generate():
    model = tiny_pair(d_g=48, d_r=32, lam=1.0, device="cuda").to(torch.bfloat16)
    ids, mask = left_padded_batch([5, 12, 9], seed=1, device="cuda")
    for kw in (FREE, {**FREE, "do_sample": True, "temperature": 0.8, "top_p": 0.9, "seed": 3}):
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=16, mode="sequential", **kw)
        new = model.generate(ids, attention_mask=mask, max_new_tokens=16, mode="concurrent", backend="streams", **kw)
        assert torch.equal(new, ref)
    sft = tiny_pair(lam=0.0, device="cuda").to(torch.bfloat16)
    ours = sft.generate(ids, attention_mask=mask, max_new_tokens=12, **FREE)
    plain = sft.generator.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, **FREE)
    assert torch.equal(ours, plain[:, ids.shape[1] :])


def test_nll_probe_and_diagnostics_run_on_the_models_device(saved_tiny_model, gitcommits):
    from flythinker.auto import load_model
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig
    from flythinker.evaluate.diagnostics import latent_diagnostics
    from flythinker.evaluate.nll import per_example_nll

    model, tok = load_model(saved_tiny_model, device="cuda")
    cpu, _ = load_model(saved_tiny_model)
    exs = load_examples(gitcommits / "sample" / "user_based", split="test", limit=6)
    cfg = PromptConfig(retrieval="recent", k=1, profile_tokens=48, query_tokens=32, target_tokens=48)
    on_gpu, n = per_example_nll(model, tok, exs, cfg, batch_size=3)
    on_cpu, n_cpu = per_example_nll(cpu, tok, exs, cfg, batch_size=3)
    assert (n == n_cpu).all() and abs(on_gpu - on_cpu).max() / on_cpu.max() < 1e-4
    assert latent_diagnostics(model, tok, exs, cfg, batch_size=3)["nll_own"] > 0


def test_bf16_captured_graphs_equal_sequential():
    """The CUDA-graph replay of the captured step gives the reference decoder's tokens in bf16."""
    from flythinker.decoding.captured import shared_captured

    model = tiny_pair(d_g=48, d_r=32, lam=1.0, device="cuda").to(torch.bfloat16)
    ids, mask = left_padded_batch([5, 12, 9], seed=1, device="cuda")
    for kw in (FREE, {**FREE, "do_sample": True, "temperature": 0.8, "top_p": 0.9, "seed": 3}):
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=16, mode="sequential", **kw)
        with fallbacks() as reasons:
            new = model.generate(ids, attention_mask=mask, max_new_tokens=16, mode="captured", **kw)
        assert torch.equal(new, ref) and not reasons
    dec = shared_captured(model)
    assert dec.graphs and all(s.graph is not None for s in dec.slots.values())
