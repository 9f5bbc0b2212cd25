"""The steppers' running batch (continuous batching): rows that join a running decode and leave it get exactly the tokens the
reference decoder gives each of them alone (greedy; sampled with a seed when alone)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB, run_schedule, tiny_causal_lm, tiny_pair

from flythinker.decoding import make_stepper
from flythinker.errors import UserError
from flythinker.static import StaticThinker


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _alone(model, prompt, n, **kw):
    ids = torch.tensor([prompt], device=model.generator.device)
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        mode="sequential",
        eos_token_id=[],
        pad_token_id=0,
        **kw,
    )[0].tolist()


def _schedule(model, concurrent, prompts, joins, budgets):
    """Greedy decode where prompt i joins before step ``joins[i]`` and leaves after ``budgets[i]`` tokens."""
    batch = make_stepper(model, "concurrent" if concurrent else "sequential")
    try:
        return run_schedule(batch, prompts, joins, budgets)
    finally:
        batch.close()


def _models(device="cpu"):
    std = 0.02 if str(device) == "cpu" else 0.2  # decisive choices on a GPU (see tiny_pair)
    g, r = tiny_causal_lm(hidden=48, seed=0, init_std=std), tiny_causal_lm(hidden=32, seed=1, init_std=std)
    return {
        "flythinker": tiny_pair(d_g=48, d_r=32, lam=1.0, device=device),
        "linear-fusion": tiny_pair(d_g=32, d_r=48, lam=1.0, fusion="linear", device=device),
        "sft": tiny_pair(lam=0.0, device=device),
        "static": StaticThinker(generator=g, reasoner=r, lam=1.0).to(device).eval(),
    }


@pytest.mark.parametrize("concurrent", [True, False], ids=["concurrent", "sequential"])
@pytest.mark.parametrize("name", ["flythinker", "linear-fusion", "sft", "static"])
def test_rows_joining_and_leaving_get_their_alone_tokens(name, concurrent, device):
    model = _models(device)[name]
    prompts = _prompts([5, 11, 3, 8, 14, 6])
    joins = [0, 0, 2, 5, 5, 9]  # two start, one joins shorter, two join longer, one joins late
    budgets = [12, 4, 9, 6, 10, 7]  # rows leave at different steps (the leftmost columns get trimmed)
    got = _schedule(model, concurrent, prompts, joins, budgets)
    for i, p in enumerate(prompts):
        assert got[i] == _alone(model, p, budgets[i]), (name, i)


def test_the_latents_matter_so_the_check_can_fail():
    """Sanity: the FlyThinker pair's tokens depend on R (else the test above would prove little)."""
    model, p = tiny_pair(d_g=48, d_r=32, lam=1.0), _prompts([8])[0]
    sft = tiny_pair(d_g=48, d_r=32, lam=0.0)
    assert _alone(model, p, 12) != _alone(sft, p, 12)


def test_a_seeded_row_alone_samples_what_generate_samples():
    from flythinker.decoding.sampling import SamplingConfig, TokenSampler

    model, p = tiny_pair(lam=1.0), _prompts([7])[0]
    sampler = TokenSampler(SamplingConfig(do_sample=True, temperature=0.8, top_p=0.9, seed=5), device="cpu")
    batch, out = make_stepper(model, "concurrent"), []
    logits = batch.add_prompts([p], pad_token_id=0)
    for _ in range(10):
        tok = sampler(logits, torch.empty(1, 0, dtype=torch.long))
        out.append(int(tok))
        logits = batch.step(tok)
    batch.close()
    assert out == _alone(model, p, 10, do_sample=True, temperature=0.8, top_p=0.9, seed=5)


def test_bad_inputs_are_clear_errors():
    model = tiny_pair()
    batch = make_stepper(model, "sequential")
    with pytest.raises(UserError, match="at least one token"):
        batch.add_prompts([[]], pad_token_id=0)
    batch.add_prompts([[5, 6]], pad_token_id=0)
    with pytest.raises(UserError, match="one token per row"):
        batch.step(torch.tensor([1, 2]))
    batch.keep(torch.zeros(0, dtype=torch.long))
    assert batch.size == 0


def test_a_mode_the_server_cannot_batch_gets_no_stepper():
    with pytest.raises(UserError, match="running batch"):
        make_stepper(tiny_pair(), "captured")


def test_rows_cannot_join_a_decode_whose_reasoner_is_elsewhere():
    """A worker process's handle decodes one batch from its first ``add`` to ``finish``."""
    from flythinker.decoding.stepper import PairStepper

    class Remote:  # a handle without a runner in this process
        def __init__(self, inner):
            self.inner = inner

        def prefill(self, *a):
            return self.inner.prefill(*a)

        def finish(self):
            self.inner.finish()

    from flythinker.decoding.stepper import InlineReasoner

    model = tiny_pair(lam=1.0)
    stepper = PairStepper(model, Remote(InlineReasoner(model)))
    stepper.add_prompts([[5, 6, 7]], pad_token_id=0)
    with pytest.raises(UserError, match="join"):
        stepper.add_prompts([[8, 9]], pad_token_id=0)
    with pytest.raises(UserError, match="leave"):
        stepper.keep(torch.tensor([0]))
    stepper.finish()
    assert stepper.size == 0
