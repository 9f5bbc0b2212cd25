"""The conformance test: every decoder of the table gives the reference decoder's tokens, for every
kind of model, greedy and sampled with a seed, over left-padded prompts, with rows ending at EOS in
the middle of a batch; a decoder the server batches gives each row that joins and leaves a running
batch the tokens it gets alone. A new decoder joins by registering in ``choices.DECODER_TABLE``.

Each model's G and R are one base (copies of one LM) where the variant allows it, so the
shared-base and captured decoders run their own steps rather than fall back; where a decoder
cannot run a model, it must say so (a ``FallbackWarning``) and still give the reference's tokens.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import fallbacks, left_padded_batch, run_schedule, tiny_causal_lm

from flythinker import FlyThinker, StaticThinker
from flythinker.choices import DECODER_TABLE
from flythinker.decoding import make_stepper

FREE = dict(eos_token_id=[], pad_token_id=0)
SAMPLE = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=20, seed=3)
VARIANTS = ("flythinker", "static", "sft", "linear", "gate")
NEW = 12


def _model(variant: str):
    g = tiny_causal_lm(hidden=32, seed=0, init_std=0.1)  # decisive choices: no near-ties in greedy
    r = copy.deepcopy(g)  # one base
    if variant == "static":
        return StaticThinker(g, r, lam=0.5).eval()
    if variant == "sft":
        return FlyThinker(g, r, lam=0.0).eval()
    if variant == "linear":  # R wider than G: the fusion's projection maps it
        return FlyThinker(g, tiny_causal_lm(hidden=48, seed=1, init_std=0.1), lam=0.5, fusion="linear").eval()
    model = FlyThinker(g, r, lam=0.5, gate="vector" if variant == "gate" else "none").eval()
    if variant == "gate":
        with torch.no_grad():  # a gate opened unevenly (it starts closed)
            model.fusion.gate.copy_(torch.linspace(-1.0, 2.0, model.fusion.gate.numel()))
    return model


def _falls_back(mode: str, variant: str) -> bool:
    """Where a decoder must hand the call to the reference loop (and say why)."""
    if mode == "captured":
        return variant == "static"  # R's latent is fixed after the prompt: nothing to record
    if mode == "shared_base":
        return variant in ("static", "sft", "linear")  # R not every step, or a width to map
    return False


def _decode(model, mode, ids, mask, **kw):
    backend = "threads" if mode == "concurrent" else None
    with fallbacks() as reasons:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, mode=mode, backend=backend, **kw)
    return out, reasons


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", [d.name for d in DECODER_TABLE])
def test_every_decoder_gives_the_reference_tokens(mode, variant):
    model = _model(variant)
    ids, mask = left_padded_batch([5, 12, 9], seed=1)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, **FREE)
    assert len(free.unique()) > 3  # a decode that says something, not one repeated token
    # three rows ending at three steps: each row's EOS is a token it generates there
    eos = dict(eos_token_id=[int(free[0, 2]), int(free[1, 5]), int(free[2, 8])], pad_token_id=0)
    for kw in (FREE, {**FREE, **SAMPLE}, eos):
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, **kw)
        got, reasons = _decode(model, mode, ids, mask, **kw)
        assert torch.equal(got, ref), (mode, variant, kw)
        assert bool(reasons) == _falls_back(mode, variant), reasons
    for i, n in enumerate([5, 12, 9]):  # left padding changes no row
        alone, _ = _decode(model, mode, ids[i : i + 1, -n:], mask[i : i + 1, -n:], **FREE)
        assert torch.equal(alone, free[i : i + 1]), (mode, variant, i)


def test_the_variants_are_different_models():
    """Sanity: the latent changes the tokens in every variant that has one (else the test above
    would check little), and SFT is G's own greedy decode."""
    ids, mask = left_padded_batch([5, 12, 9], seed=1)
    out = {v: _model(v).generate(ids, attention_mask=mask, max_new_tokens=NEW, **FREE) for v in VARIANTS}
    for v in ("flythinker", "static", "linear", "gate"):
        assert not torch.equal(out[v], out["sft"]), v
    assert not torch.equal(out["flythinker"], out["gate"]) and not torch.equal(out["flythinker"], out["static"])
    sft = _model("sft").generator.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, **FREE)
    assert torch.equal(out["sft"], sft[:, ids.shape[1] :])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", [d.name for d in DECODER_TABLE if d.server])
def test_a_running_batch_gives_each_row_its_tokens_alone(mode, variant):
    model = _model(variant)
    if mode == "shared_base" and _falls_back(mode, variant):
        pytest.skip("the server refuses shared_base for a model without one base (tests/decoding/test_shared_base.py)")
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 97, (n,), generator=gen).tolist() for n in (5, 11, 3, 8, 14, 6)]
    joins, budgets = [0, 0, 2, 5, 5, 9], [12, 4, 9, 6, 10, 7]  # rows join shorter and longer, leave early
    stepper = make_stepper(model, mode)
    try:
        got = run_schedule(stepper, prompts, joins, budgets)
    finally:
        stepper.close()
    for i, p in enumerate(prompts):
        ids = torch.tensor([p])
        alone = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budgets[i], **FREE)
        assert got[i] == alone[0].tolist(), (mode, variant, i)
