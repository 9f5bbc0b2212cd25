"""The server's engine: requests that arrive while others decode join the running batch, leave
it at EOS or their budget, keep their own sampling settings, and get exactly the tokens the
reference decoder gives each of them alone."""

from __future__ import annotations

import pytest
import torch

from flythinker.decoding.concurrent import default_threads


def _reference(model, tok, prompt, n, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # the arithmetic the engine's G does (MKL's order depends on it)
    try:
        ids = torch.tensor([prompt])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            mode="sequential",
            eos_token_id=[tok.eos_token_id],
            pad_token_id=tok.pad_token_id,
        )[0].tolist()
    finally:
        torch.set_num_threads(previous)
    return out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out


@pytest.mark.parametrize("mode", ["concurrent", "sequential", "shared_base"])
def test_staggered_requests_join_the_running_batch_and_get_their_alone_tokens(saved_tiny_model, mode):
    import copy

    from flythinker import FlyThinker
    from flythinker.apps.serve.engine import Engine
    from flythinker.auto import load_model

    model, tok = load_model(saved_tiny_model)
    if mode == "shared_base":  # G and R one base: its own generator twice
        model = FlyThinker(model.generator, copy.deepcopy(model.generator), lam=0.5, generator_tokenizer=tok).eval()
    texts = [
        "fix the parser",
        "Document the new option for the command line tool and its tests",
        "refs: speed up",
        "Teach the merge machinery to keep going after a conflict in a submodule",
    ]
    prompts = [tok(t)["input_ids"] for t in texts]
    budgets = [30, 9, 20, 14]
    engine = Engine(model, tok, max_batch=3, mode=mode)
    try:
        reqs, streams, got = [], [], []
        for p, n in zip(prompts, budgets):
            if streams:  # the batch is decoding: read a few tokens of the latest request first
                got[-1] += [next(streams[-1]) for _ in range(2)]
            reqs.append(engine.submit(p, max_tokens=n, temperature=0.0))
            streams.append(reqs[-1].tokens())
            got.append([])
        sampled = engine.submit(prompts[0], max_tokens=6, temperature=0.8, top_p=0.9)  # other settings, same batch
        for s, g in zip(streams, got):
            g += list(s)
        assert 1 <= len(list(sampled.tokens())) <= 6
    finally:
        engine.close()
    threads = engine.threads or torch.get_num_threads()
    for i, (p, n) in enumerate(zip(prompts, budgets)):
        assert got[i] == _reference(model, tok, p, n, threads), i
        assert reqs[i].finish_reason == ("length" if len(got[i]) == n else "stop")
    assert engine.stats["joined_running"] >= 2 and engine.stats["peak_rows"] == 3, engine.stats


def test_a_seeded_request_joins_the_running_batch_and_samples_what_generate_samples(saved_tiny_model):
    from flythinker.apps.serve.engine import Engine
    from flythinker.auto import load_model

    model, tok = load_model(saved_tiny_model)
    prompt = tok("fix the parser")["input_ids"]
    engine = Engine(model, tok, max_batch=4, mode="sequential")
    try:
        other = engine.submit(prompt, max_tokens=40, temperature=0.7)
        first = other.tokens()
        next(first), next(first)  # the batch is decoding
        seeded = engine.submit(prompt, max_tokens=12, temperature=0.8, top_p=0.95, seed=11)
        late = engine.submit(prompt, max_tokens=5, temperature=0.7)  # joins beside the seeded one
        got = list(seeded.tokens())
        list(first), list(late.tokens())
    finally:
        engine.close()
    ids = torch.tensor([prompt])
    ref = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=12,
        mode="sequential",
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        seed=11,
        eos_token_id=[tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
    )[0].tolist()
    assert got == (ref[: ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref)
    # nobody waited for anybody: the seeded request and `late` joined the running batch
    assert engine.stats["peak_rows"] == 3 and engine.stats["joined_running"] >= 2, engine.stats


def test_an_unknown_mode_is_refused(saved_tiny_model):
    from flythinker.apps.serve.engine import Engine
    from flythinker.auto import load_model
    from flythinker.errors import UserError

    model, tok = load_model(saved_tiny_model)
    with pytest.raises(UserError, match="mode"):
        Engine(model, tok, mode="fast")
    assert default_threads() >= 1


def test_a_client_that_goes_away_mid_decode_frees_its_row(saved_tiny_model):
    from flythinker.apps.serve.engine import Engine
    from flythinker.auto import load_model

    model, tok = load_model(saved_tiny_model)
    prompt = tok("fix the parser")["input_ids"]
    engine = Engine(model, tok, max_batch=2, mode="sequential")
    try:
        gone = engine.submit(prompt, max_tokens=3000, temperature=1.0, seed=0)  # no EOS in its first 1500 tokens
        stream = gone.tokens()
        first = [next(stream) for _ in range(3)]  # decoding
        gone.cancel()
        rest = list(stream)
        stays = engine.submit(prompt, max_tokens=4, temperature=0.0)  # the freed row is taken
        assert len(list(stays.tokens())) <= 4
    finally:
        engine.close()
    assert gone.finish_reason == "cancelled" and len(first) + len(rest) < 100
    assert not engine.rows  # nothing left decoding


def test_shared_base_mode_refuses_a_pair_without_one_base_at_start(saved_tiny_model):
    from flythinker.apps.serve.engine import Engine
    from flythinker.auto import load_model
    from flythinker.errors import UserError

    model, tok = load_model(saved_tiny_model)  # G (d 48) and R (d 32): two bases
    with pytest.raises(UserError, match="share one base"):
        Engine(model, tok, mode="shared_base")
