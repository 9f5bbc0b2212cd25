"""The static-reasoning variant: forward == the one decoding loop with a static handle, save/load."""

from __future__ import annotations

import pytest
import torch
from tiny_models import left_padded_batch, tiny_causal_lm
from torch.testing import assert_close

from flythinker import FlyThinker
from flythinker.decoding.steps import GeneratorRunner, ReasonerRunner
from flythinker.lm import positions_from_mask
from flythinker.static import StaticThinker, last_prompt_index


def static_pair(d_g=32, d_r=32, lam=1.0, fusion="prefix"):
    g, r = tiny_causal_lm(hidden=d_g, seed=0), tiny_causal_lm(hidden=d_r, seed=1)
    return StaticThinker(generator=g, reasoner=r, lam=lam, fusion=fusion).eval()


@pytest.mark.parametrize("d_g,d_r,fusion", [(32, 32, "prefix"), (48, 32, "prefix"), (32, 48, "linear")])
def test_static_forward_equals_static_decoder_step_by_step(d_g, d_r, fusion):
    model = static_pair(d_g, d_r, fusion=fusion)
    ids, mask = left_padded_batch([9, 14], seed=3)  # (B, T) prompt + response, left padded
    P = torch.tensor([5, 8])  # real prompt tokens per row
    full = model(input_ids=ids, attention_mask=mask, prompt_lengths=P).logits  # (B, T, V)
    T = ids.shape[1]
    n_real = mask.sum(1)
    # decode each row alone: prefill its prompt, then feed its response tokens one by one
    for b in range(2):
        row_ids, row_mask = ids[b : b + 1, T - n_real[b] :], mask[b : b + 1, T - n_real[b] :]
        p = int(P[b])
        pos = positions_from_mask(row_mask)
        latents = ReasonerRunner(model).prefill(row_ids[:, :p], row_mask[:, :p], pos[:, :p])  # (1, p, d_R)
        z = latents[:, -1:]
        g = GeneratorRunner(model)  # the loop's prefill places z_P itself (StaticThinker.fused_latents)
        steps = [g.prefill(row_ids[:, :p], row_mask[:, :p], pos[:, :p], latents)]
        for t in range(p, row_ids.shape[1] - 1):
            steps.append(g.step(row_ids[:, t], z, row_mask[:, : t + 1], pos[:, t : t + 1]))
        got = torch.stack(steps, dim=1)  # (1, n - p, V): logits at positions p-1 .. n-2
        want = full[b : b + 1, T - n_real[b] + p - 1 : T - 1]
        assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_static_latent_is_the_same_at_every_response_position_and_matters():
    model = static_pair()
    ids, mask = left_padded_batch([12], seed=4)
    labels = ids.clone()
    labels[:, :7] = -100  # response starts at column 7: the latent applies from column 6 on
    assert last_prompt_index(mask, labels).tolist() == [6]
    out = model(input_ids=ids, attention_mask=mask, labels=labels).logits
    model.fusion.lam = 0.0
    plain = model(input_ids=ids, attention_mask=mask, labels=labels).logits
    assert_close(out[:, :6], plain[:, :6])  # prompt positions untouched
    assert (out[:, 6:] - plain[:, 6:]).abs().amax(-1).min() > 1e-4  # every response position changed
    # changing a response token cannot change the latent (it is read from the prompt only)
    model.fusion.lam = 1.0
    ids2 = ids.clone()
    ids2[0, 10] = (ids2[0, 10] + 1) % 97
    out2 = model(input_ids=ids2, attention_mask=mask, labels=labels).logits
    assert_close(out2[:, :10], out[:, :10])


def test_static_greedy_generate_is_argmax_of_forward():
    model = static_pair()
    ids, mask = left_padded_batch([6, 9], seed=5)
    new = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[], pad_token_id=0)
    full_ids, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
    logits = model(input_ids=full_ids, attention_mask=full_mask, prompt_lengths=mask.sum(1)).logits
    T = ids.shape[1]
    assert torch.equal(logits[:, T - 1 : -1].argmax(-1), new)


def test_static_save_load_remembers_the_variant(tmp_path):
    model = static_pair(48, 32)
    ids, mask = left_padded_batch([10], seed=6)
    model.save_pretrained(tmp_path / "m")
    loaded = FlyThinker.from_pretrained(tmp_path / "m")
    assert type(loaded) is StaticThinker
    assert_close(loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits)
    plain = FlyThinker(tiny_causal_lm(seed=0), tiny_causal_lm(seed=1))
    plain.save_pretrained(tmp_path / "f")
    assert type(FlyThinker.from_pretrained(tmp_path / "f")) is FlyThinker
