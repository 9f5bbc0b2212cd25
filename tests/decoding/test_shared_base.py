"""Shared-base decoding: G's and R's rows of a step in one forward, the reference's tokens exactly;
per-row LoRA adapters equal peft's own forward; what shares no base goes to the reference loop."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import fallbacks, left_padded_batch, run_schedule, tiny_causal_lm

from flythinker import FlyThinker
from flythinker.decoding.captured import CapturedDecoder
from flythinker.decoding.shared_base import RowAdapters, unshared_reason
from flythinker.tiny import FAMILIES, SLIDING_WINDOW, family_config, random_lm

FREE = dict(eos_token_id=[], pad_token_id=0)
SAMPLE = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=20, seed=3)
GPU = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
)


def _lora(base, seed: int, targets: list[str], rank: int):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0: draw it, so each adapter changes its model
            torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def adapters_of_one_base(device="cpu"):
    """G and R: one base, each with its own LoRA (different layers and ranks)."""
    base = tiny_causal_lm(hidden=32, seed=0, init_std=0.1)
    g = _lora(base, 0, ["q_proj", "v_proj", "down_proj"], rank=8)
    r = _lora(base, 1, ["q_proj", "o_proj", "gate_proj"], rank=4)
    return FlyThinker(generator=g, reasoner=r, lam=0.5).to(device).eval()


def _agree(model, device="cpu", new=24):
    ids, mask = left_padded_batch([5, 12, 9], seed=1, device=device)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=new, **FREE)
    eos = [int(free[0, 3]), int(free[1, 6]), int(free[2, 10])]
    for kw in (FREE, SAMPLE, dict(eos_token_id=eos, pad_token_id=0)):
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=new, **kw)
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=new, mode="shared_base", **kw), ref)
        dec = CapturedDecoder(model, shared_base=True)
        with fallbacks() as reasons:
            assert torch.equal(dec.generate(ids, attention_mask=mask, max_new_tokens=new, **kw), ref)
        assert not reasons
    return free


@pytest.mark.parametrize("device", ["cpu", GPU])
def test_one_base_decodes_as_the_reference(device):
    g = tiny_causal_lm(hidden=32, seed=0, init_std=0.1)
    model = FlyThinker(generator=g, reasoner=copy.deepcopy(g), lam=0.5).to(device).eval()
    assert unshared_reason(model) is None
    free = _agree(model, device)
    assert len(free.unique()) > 3


@pytest.mark.parametrize("device", ["cpu", GPU])
def test_lora_adapters_of_one_base_decode_as_the_reference(device):
    model = adapters_of_one_base(device)
    assert unshared_reason(model) is None
    free = _agree(model, device)
    ids, mask = left_padded_batch([5, 12, 9], seed=1, device=device)
    with model.reasoner.disable_adapter():  # R's adapter matters: without it, other tokens
        assert not torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=24, **FREE), free)


def test_row_adapters_equal_each_models_peft_forward():
    model = adapters_of_one_base()
    x = torch.randint(3, 97, (3, 7))
    with torch.no_grad():
        want_g = model.generator(input_ids=x).logits
        want_r = model.reasoner(input_ids=x).logits
        with RowAdapters(model).active():
            both = model.generator(input_ids=torch.cat([x, x])).logits
    assert torch.allclose(both[:3], want_g, atol=1e-5) and torch.allclose(both[3:], want_r, atol=1e-5)
    assert not torch.allclose(want_g, want_r, atol=1e-3)
    with torch.no_grad():  # the hooks are gone afterwards
        assert torch.equal(model.generator(input_ids=x).logits, want_g)


def test_what_shares_no_base_is_named_and_decoded_by_the_reference():
    from peft import LoraConfig, get_peft_model

    g, r = tiny_causal_lm(hidden=32, seed=0), tiny_causal_lm(hidden=32, seed=1)
    cases = {
        "differ in": FlyThinker(g, r, lam=0.5),
        "maps R's width": FlyThinker(g, tiny_causal_lm(hidden=48, seed=1), lam=0.5, fusion="linear"),
        "does not run at every step": FlyThinker(g, copy.deepcopy(g), lam=0.0),
        "DoRA": FlyThinker(
            get_peft_model(copy.deepcopy(g), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)),
            copy.deepcopy(g),
            lam=0.5,
        ),
        "embedding table": FlyThinker(copy.deepcopy(g), copy.deepcopy(g), lam=0.5),
    }
    if "lora_bias" in LoraConfig.__dataclass_fields__:  # peft >= 0.14
        biased = get_peft_model(copy.deepcopy(g), LoraConfig(r=4, target_modules=["q_proj"], lora_bias=True))
        cases["biases"] = FlyThinker(biased, copy.deepcopy(g), lam=0.5)
    table = cases["embedding table"]  # wrapped after the pair is made, as LoRA training wraps it
    table.reasoner = get_peft_model(table.reasoner, LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]))
    ids, mask = left_padded_batch([5, 9], seed=1)
    for words, model in cases.items():
        model.eval()
        assert words in unshared_reason(model)
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, **FREE)
        with fallbacks() as reasons:
            assert torch.equal(
                model.generate(ids, attention_mask=mask, max_new_tokens=8, mode="shared_base", **FREE), ref
            )
        assert len(reasons) == 1 and words in reasons[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_decodes_one_base_as_the_reference(family):
    """The family's own logit scaling and soft-capping on G's rows; sliding windows go to the reference."""
    lm = random_lm(family_config(family, hidden=64, vocab=211, init_std=0.1), 0).eval()
    model = FlyThinker(lm, copy.deepcopy(lm), lam=0.5).eval()
    ids, mask = left_padded_batch([5, 11], vocab=211, seed=1)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=10, **FREE)
    with fallbacks() as reasons:
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=10, mode="shared_base", **FREE), ref)
    slides = getattr(lm.config, "sliding_window", None) == SLIDING_WINDOW
    assert bool(reasons) == slides


@pytest.mark.parametrize("kind", ["one-base", "lora"])
def test_the_servers_running_batch_decodes_one_base_rows_as_alone(kind):
    """Rows joining and leaving the shared-base running batch get the reference's tokens alone."""
    from flythinker.decoding.shared_base import SharedBaseStepper
    from flythinker.errors import UserError

    if kind == "lora":
        model = adapters_of_one_base()
    else:
        g = tiny_causal_lm(hidden=32, seed=0, init_std=0.1)
        model = FlyThinker(generator=g, reasoner=copy.deepcopy(g), lam=0.5).eval()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 97, (n,), generator=gen).tolist() for n in (5, 11, 3, 8, 14, 6)]
    joins, budgets = [0, 0, 2, 5, 5, 9], [12, 4, 9, 6, 10, 7]
    got = run_schedule(SharedBaseStepper(model), prompts, joins, budgets)
    for i, p in enumerate(prompts):
        ids = torch.tensor([p])
        alone = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budgets[i], **FREE)
        assert got[i] == alone[0].tolist(), i
    with pytest.raises(UserError, match="share one base"):
        SharedBaseStepper(FlyThinker(tiny_causal_lm(hidden=32, seed=0), tiny_causal_lm(hidden=32, seed=1), lam=0.5))
