"""The one decoding loop with a fake Generator that returns scripted logits (litgpt's style): EOS,
padding, early stopping, positions and sampling rules, without a real network."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from flythinker.decoding.loop import run
from flythinker.decoding.sampling import SamplingConfig
from flythinker.decoding.stepper import PairStepper
from flythinker.fusion import Fusion

V, D, EOS, PAD = 12, 4, 2, 0


class ScriptedLM(nn.Module):
    """A causal LM whose call c puts logit 10 on ``script[row][c]`` (uniform where ``script`` is None)."""

    def __init__(self, script):
        super().__init__()
        self.script, self.calls = script, []
        self.embed = nn.Embedding(V, D)

    def get_input_embeddings(self):
        return self.embed

    def get_decoder(self):
        return self

    def forward(
        self, inputs_embeds, attention_mask, position_ids, use_cache=False, logits_to_keep=0, past_key_values=None
    ):
        c = len(self.calls)
        self.calls.append({"mask": attention_mask.clone(), "positions": position_ids.clone(), "cache": past_key_values})
        B, T = inputs_embeds.shape[:2]
        logits = torch.zeros(B, T, V)
        if self.script is not None:
            for b in range(B):
                logits[b, -1, self.script[b][c]] = 10.0
        return CausalLMOutputWithPast(logits=logits, past_key_values=c + 1)


class FakeFlyThinker:
    """What the loop needs of a model (λ = 0: the fusion leaves embeddings alone)."""

    lam, variant, reasoning = 0.0, "flythinker", "never"

    def __init__(self, script):
        self.generator = ScriptedLM(script)
        self.fusion = Fusion(D, D, lam=0.0)

    def rho(self):
        return torch.tensor(1.0)

    def place_latents(self, embeds, latents, attention_mask):
        return embeds


def decode(script, ids, mask, max_new, sampling=None, eos=(EOS,), streamer=None):
    model = FakeFlyThinker(script)
    out = run(PairStepper(model), ids, mask, max_new, sampling or SamplingConfig(), list(eos), PAD, streamer)
    return out, model.generator.calls


def test_finished_rows_get_pad_and_the_loop_stops_when_every_row_has_ended():
    ids, mask = torch.tensor([[5, 6], [7, 8]]), torch.ones(2, 2, dtype=torch.long)
    script = [[3, EOS, 9, 9, 9], [4, 5, EOS, 9, 9]]
    out, calls = decode(script, ids, mask, max_new=5)
    assert out.tolist() == [[3, EOS, PAD], [4, 5, EOS]]  # row 0 padded after its EOS; nothing after all ended
    assert len(calls) == 3  # prefill + 2 steps: no forward once every row has finished


def test_max_new_tokens_bounds_the_steps_and_one_token_needs_no_step():
    ids, mask = torch.tensor([[5]]), torch.ones(1, 1, dtype=torch.long)
    out, calls = decode([[3, 4, 5, 6]], ids, mask, max_new=3)
    assert out.tolist() == [[3, 4, 5]] and len(calls) == 3
    out, calls = decode([[3, 4]], ids, mask, max_new=1)
    assert out.tolist() == [[3]] and len(calls) == 1


def test_without_eos_ids_nothing_stops_early():
    ids, mask = torch.tensor([[5]]), torch.ones(1, 1, dtype=torch.long)
    out, _ = decode([[EOS, EOS, EOS]], ids, mask, max_new=3, eos=())
    assert out.tolist() == [[EOS, EOS, EOS]]


def test_left_padding_positions_and_masks_count_real_tokens_only():
    ids = torch.tensor([[PAD, PAD, 5], [6, 7, 8]])
    mask = torch.tensor([[0, 0, 1], [1, 1, 1]])
    _, calls = decode([[3, 4, 5], [3, 4, 5]], ids, mask, max_new=3)
    assert calls[0]["positions"].tolist() == [[1, 1, 0], [0, 1, 2]]  # pads get position 1, as in generate
    assert [c["positions"].tolist() for c in calls[1:]] == [[[1], [3]], [[2], [4]]]
    assert calls[2]["mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert [c["cache"] for c in calls] == [None, 1, 2]  # each step continues the previous cache


def test_greedy_is_argmax_and_sampling_is_reproducible_per_seed():
    ids, mask = torch.tensor([[5]]), torch.ones(1, 1, dtype=torch.long)
    greedy, _ = decode([[7] * 8], ids, mask, max_new=8)
    assert greedy.tolist() == [[7] * 8]
    top1, _ = decode([[7] * 8], ids, mask, max_new=8, sampling=SamplingConfig(do_sample=True, top_k=1, seed=3))
    assert top1.tolist() == greedy.tolist()  # top-k 1 keeps only the argmax
    uniform = SamplingConfig(do_sample=True, seed=11)
    a, _ = decode(None, ids, mask, max_new=16, sampling=uniform, eos=())
    b, _ = decode(None, ids, mask, max_new=16, sampling=uniform, eos=())
    c, _ = decode(None, ids, mask, max_new=16, sampling=SamplingConfig(do_sample=True, seed=12), eos=())
    assert torch.equal(a, b) and not torch.equal(a, c) and len(set(a[0].tolist())) > 3


def test_a_vanishing_temperature_is_the_argmax_not_nan():
    """Found by the server's fuzzer: temperature 2.2e-308 divided the logits into inf and NaN (a 500);
    below SAMPLING_EPS sampling takes its limit, the argmax."""
    from flythinker.decoding.sampling import SAMPLING_EPS

    ids, mask = torch.tensor([[5]]), torch.ones(1, 1, dtype=torch.long)
    greedy, _ = decode([[7] * 8], ids, mask, max_new=8)
    for t in (2.2250738585072014e-308, 1e-30, SAMPLING_EPS / 2):
        tiny = SamplingConfig(do_sample=True, temperature=t, seed=0)
        out, _ = decode([[7] * 8], ids, mask, max_new=8, sampling=tiny)
        assert out.tolist() == greedy.tolist() and tiny.greedy
    assert not SamplingConfig(do_sample=True, temperature=SAMPLING_EPS).greedy


def test_top_p_keeps_the_nucleus_only():
    ids, mask = torch.tensor([[5]]), torch.ones(1, 1, dtype=torch.long)
    # logit 10 on token 7, 0 elsewhere: p(7) ≈ 0.9995, so top-p 0.9 leaves token 7 alone
    out, _ = decode([[7] * 20], ids, mask, max_new=20, sampling=SamplingConfig(do_sample=True, top_p=0.9, seed=0))
    assert out.tolist() == [[7] * 20]


def test_the_streamer_sees_the_prompt_then_each_kept_token():
    seen = []

    class Streamer:
        def put(self, value):
            seen.append(value.tolist())

        def end(self):
            seen.append("end")

    ids, mask = torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long)
    decode([[3, EOS, 9]], ids, mask, max_new=3, streamer=Streamer())
    assert seen == [[[5, 6]], [3], [EOS], "end"]


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"top_p": 0.0}, {"top_k": -1}])
def test_bad_sampling_settings_are_refused(bad):
    from flythinker.errors import UserError

    with pytest.raises(UserError):
        SamplingConfig(do_sample=True, **bad)
