"""Captured decoding (static caches, one recorded step): the reference decoder's tokens exactly.

On a CPU the static step runs eagerly; the CUDA-graph replay of the same step is tested under the
``gpu`` marker (and in tests/test_gpu.py in bf16)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from tiny_models import fallbacks, left_padded_batch, tiny_pair

from flythinker.decoding.captured import BUCKET, CapturedDecoder, shared_captured, unsupported_reason
from flythinker.tiny import SLIDING_WINDOW, family_config, random_lm

FREE = dict(eos_token_id=[], pad_token_id=0)
SAMPLE = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=20, seed=3)
PAIRS = [
    pytest.param(32, 32, "prefix", id="equal-prefix"),
    pytest.param(48, 32, "prefix", id="dR<dG-prefix"),
    pytest.param(32, 48, "linear", id="dR>dG-linear"),
]


def _gpu_or_cpu(device):
    return pytest.param(
        device, marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
    )


DEVICES = ["cpu", _gpu_or_cpu("cuda")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d_g,d_r,fusion", PAIRS)
@pytest.mark.parametrize("lam", [0.5, 0.0])
def test_captured_equals_the_reference_greedy_and_sampled(device, d_g, d_r, fusion, lam):
    model = tiny_pair(d_g=d_g, d_r=d_r, lam=lam, fusion=fusion, device=device)
    ids, mask = left_padded_batch([5, 12, 9], seed=1, device=device)
    for kw in (FREE, SAMPLE):
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=24, mode="sequential", **kw)
        with fallbacks() as reasons:
            new = model.generate(ids, attention_mask=mask, max_new_tokens=24, mode="captured", **kw)
        assert torch.equal(new, ref) and not reasons
        assert len(ref.unique()) > 3  # a decode that says something, not one repeated token
    assert shared_captured(model).graphs == (device == "cuda")
    if lam == 0.0:  # λ = 0 under capture is still the generator's own generate
        plain = model.generator.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, **FREE)
        assert torch.equal(
            model.generate(ids, attention_mask=mask, max_new_tokens=24, mode="captured", **FREE),
            plain[:, ids.shape[1] :],
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check_every", [1, 8])
def test_rows_end_where_the_reference_ends_them(device, check_every):
    """Finished rows get pad and the output is cut at the step the reference stops, although the
    captured loop looks at EOS only every ``check_every`` tokens."""
    model = tiny_pair(d_g=48, d_r=32, lam=0.5, device=device)
    ids, mask = left_padded_batch([5, 12, 9], seed=1, device=device)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=30, **FREE)
    eos = [int(free[0, 3]), int(free[1, 6]), int(free[2, 10])]  # rows end at different steps
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=0)
    dec = CapturedDecoder(model, check_every=check_every)
    new = dec.generate(ids, attention_mask=mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(new, ref)
    assert ref.shape[1] <= 11 and (ref == 0).any()  # stopped early, with pads after the first rows' EOS


def test_one_recorded_shape_serves_other_prompts_and_the_streamer_sees_each_token():
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.parts = []

        def put(self, value):
            self.parts.append(value.clone())

        def end(self):
            self.parts.append(None)

    model = tiny_pair(d_g=48, d_r=32, lam=0.5)
    dec = CapturedDecoder(model)
    for lengths, seed in (([5, 12, 9], 1), ([7, 3, 20], 2), ([4], 3)):
        ids, mask = left_padded_batch(lengths, seed=seed)
        ref_stream, new_stream = Collect(), Collect()
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=16, streamer=ref_stream, **SAMPLE)
        new = dec.generate(ids, attention_mask=mask, max_new_tokens=16, streamer=new_stream, **SAMPLE)
        assert torch.equal(new, ref)
        assert len(new_stream.parts) == len(ref_stream.parts) == 16 + 2
        assert all(a is b is None or torch.equal(a, b) for a, b in zip(new_stream.parts, ref_stream.parts))
    assert [key[:2] for key in dec.slots] == [(3, BUCKET), (1, BUCKET)]  # kept per (batch, length)


def test_what_static_caches_cannot_hold_goes_to_the_reference_loop():
    cfg = family_config("mistral", hidden=64, vocab=211, init_std=0.1)
    assert cfg.sliding_window == SLIDING_WINDOW
    from flythinker import FlyThinker

    model = FlyThinker(random_lm(cfg, 0), random_lm(cfg, 1), lam=0.5).eval()
    assert "sliding window (4) is shorter than the text" in unsupported_reason(model, 64)
    ids, mask = left_padded_batch([5, 11], vocab=211, seed=1)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=10, **FREE)
    with fallbacks() as reasons:
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=10, mode="captured", **FREE), ref)
    assert len(reasons) == 1 and "sliding window (4)" in reasons[0]
    cfg.sliding_window = 4096  # a window longer than the text is a plain causal mask: captured
    assert unsupported_reason(FlyThinker(random_lm(cfg, 0), random_lm(cfg, 1), lam=0.5), 512) is None


def test_the_shared_decoder_goes_with_its_model():
    model = tiny_pair(lam=0.5)
    ids, mask = left_padded_batch([5, 7], seed=1)
    model.generate(ids, attention_mask=mask, max_new_tokens=4, mode="captured", **FREE)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_the_command_line_offers_the_mode():
    from flythinker.choices import DecodeMode
    from flythinker.decoding import MODES

    assert "captured" in MODES and DecodeMode("captured").value == "captured"


def test_overlap_is_refused_until_it_is_fixed(monkeypatch):
    """R on a second stream inside the graph crashed on an H200: the option refuses with the reason,
    and only the GPU queue's diagnosis (FLYTHINKER_UNSAFE_OVERLAP=1) may build it."""
    from flythinker.errors import UserError

    model = tiny_pair(d_g=32, d_r=32, lam=0.5)
    monkeypatch.delenv("FLYTHINKER_UNSAFE_OVERLAP", raising=False)
    with pytest.raises(UserError, match="withdrawn until it is fixed.*illegal memory access"):
        CapturedDecoder(model, overlap=True)
    assert CapturedDecoder(model).overlap is False
    monkeypatch.setenv("FLYTHINKER_UNSAFE_OVERLAP", "1")
    assert CapturedDecoder(model, overlap=True).overlap is True
