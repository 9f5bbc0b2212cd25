"""Teacher-forced NLL through the LM head's kept suffix (``logits_to_keep``) is the NLL of the full logits."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB, tiny_causal_lm, tiny_pair

from flythinker.evaluate.nll import logits_needed, response_nll, token_nll
from flythinker.lm import accepts_logits_to_keep
from flythinker.train.assemble import SFTModel


def _batch(prompt_lengths, response_lengths, padding_side: str, seed: int = 0) -> dict:
    """Random prompt + response rows, padded on ``padding_side``; labels only on the responses."""
    g = torch.Generator().manual_seed(seed)
    T = max(p + r for p, r in zip(prompt_lengths, response_lengths))
    ids = torch.zeros((len(prompt_lengths), T), dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (p, r) in enumerate(zip(prompt_lengths, response_lengths)):
        start = T - p - r if padding_side == "left" else 0
        ids[i, start : start + p + r] = torch.randint(3, VOCAB, (p + r,), generator=g)
        mask[i, start : start + p + r] = 1
        labels[i, start + p : start + p + r] = ids[i, start + p : start + p + r]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _full_nll(model, batch):
    """The reference: logits at every position, no keyword."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return token_nll(logits, batch["labels"]).sum(1), (batch["labels"][:, 1:] != -100).sum(1)


def test_logits_needed_starts_one_before_the_earliest_label():
    labels = torch.full((2, 10), -100)
    assert logits_needed(labels) == 1  # nothing labelled
    labels[0, 7:] = 5
    assert logits_needed(labels) == 4  # positions 6..9
    labels[1, 4:6] = 5  # a right-padded row with an earlier response
    assert logits_needed(labels) == 7
    labels[1, 0] = 5  # position 0 is never predicted: keep everything
    assert logits_needed(labels) == 10


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("kind", ["flythinker", "sft_model", "plain"])
def test_response_nll_with_kept_logits_equals_the_full_logits(kind, padding_side):
    torch.manual_seed(0)
    model = {
        "flythinker": lambda: tiny_pair(lam=0.5),
        "sft_model": lambda: SFTModel(tiny_causal_lm()).eval(),
        "plain": lambda: tiny_causal_lm(),
    }[kind]()
    batch = _batch([9, 4, 14], [5, 11, 3], padding_side)
    assert accepts_logits_to_keep(model)
    got_sum, got_n = response_nll(model, batch)
    want_sum, want_n = _full_nll(model, batch)
    assert torch.equal(got_n, want_n) and got_n.tolist() == [5, 11, 3]
    torch.testing.assert_close(got_sum, want_sum, rtol=1e-5, atol=1e-5)


def test_a_forward_without_logits_to_keep_gets_the_full_logits():
    class Plain(torch.nn.Module):  # a model whose forward has no such keyword
        def __init__(self):
            super().__init__()
            self.lm = tiny_causal_lm()

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask)

    model = Plain().eval()
    assert not accepts_logits_to_keep(model)
    batch = _batch([6, 2], [3, 8], "left")
    torch.testing.assert_close(response_nll(model, batch)[0], _full_nll(model, batch)[0])


def test_wrappers_are_looked_through():
    peft = pytest.importorskip("peft")
    lm = peft.get_peft_model(tiny_causal_lm(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert accepts_logits_to_keep(lm)
    wrapped = torch.nn.Module()
    wrapped.module = SFTModel(lm)  # DDP-style: the model under .module
    assert accepts_logits_to_keep(wrapped)
