"""Tiny random Qwen2-shaped models and test data paths, imported by the tests (`from tiny_models import ...`).

A plain module, not conftest.py: tests/train has a conftest.py of its own, so importing helpers
from "conftest" would get whichever conftest was imported first."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GITCOMMITS = SHARED / "data" / "gitcommits"

VOCAB = 97


def tiny_causal_lm(
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = VOCAB,
    seed: int = 0,
    init_std: float = 0.02,
):
    """A randomly initialised Qwen2ForCausalLM small enough for unit tests (flythinker.tiny's builder).

    ``init_std`` is the weights' standard deviation (transformers' ``initializer_range``): the
    default 0.02 leaves the top two logits of a random model often within 1e-5 of each other, so a
    test that compares greedy outputs across processes wants a larger one (decisive choices)."""
    from flythinker.tiny import qwen2_config, random_lm

    cfg = qwen2_config(
        hidden,
        layers,
        heads,
        kv_heads,
        2 * hidden,
        vocab,
        tie=False,
        max_positions=256,
        bos=1,
        eos=2,
        pad=0,
        init_std=init_std,
        attn="eager",
    )
    return random_lm(cfg, seed).eval()


def tiny_llama(hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = VOCAB, seed: int = 0):
    """A random tied-embedding Llama shaped like SmolLM2 (no pad token: EOS pads)."""
    from flythinker.tiny import llama_config, random_lm

    cfg = llama_config(
        hidden, layers, heads, kv_heads, 2 * hidden, vocab, tie=True, max_positions=256, bos=1, eos=2, attn="eager"
    )
    return random_lm(cfg, seed).eval()


def tiny_pair(d_g: int = 32, d_r: int = 32, lam: float = 0.5, fusion: str = "prefix", seed: int = 0, device="cpu"):
    """A FlyThinker over two tiny Qwen2s on ``device``. On a GPU the weights are drawn larger
    (``init_std`` 0.2): kernels there round differently from step to step, and decisive choices
    keep greedy comparisons about the method, not about near-ties."""
    from flythinker import FlyThinker

    std = 0.02 if str(device) == "cpu" else 0.2
    g = tiny_causal_lm(hidden=d_g, seed=seed, init_std=std)
    r = tiny_causal_lm(hidden=d_r, layers=2, seed=seed + 1, init_std=std)
    return FlyThinker(generator=g, reasoner=r, lam=lam, fusion=fusion).to(device).eval()


def save_tiny_flythinker(path, tokenizer, init_std: float = 0.02):
    """A tiny FlyThinker (d_G=48, d_R=32) over ``tokenizer``'s vocabulary, saved with it to ``path``."""
    from flythinker import FlyThinker

    n = len(tokenizer)
    g = tiny_causal_lm(hidden=48, vocab=n, seed=0, init_std=init_std)
    r = tiny_causal_lm(hidden=32, vocab=n, seed=1, init_std=init_std)
    for m in (g, r):  # the generation config too: decoding ends on its EOS ids as well as the tokenizer's
        m.config.eos_token_id = m.generation_config.eos_token_id = tokenizer.eos_token_id
        m.config.pad_token_id = m.generation_config.pad_token_id = tokenizer.pad_token_id
    FlyThinker(g, r, lam=0.5, generator_tokenizer=tokenizer, reasoner_tokenizer=tokenizer).save_pretrained(path)
    return path


def left_padded_batch(lengths, vocab: int = VOCAB, seed: int = 0, pad: int = 0, device="cpu"):
    """Random prompts of the given lengths, left-padded: (input_ids, attention_mask) on ``device``."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n :] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, T - n :] = 1
    return ids.to(device), mask.to(device)


def run_schedule(batch, prompts, joins, budgets) -> dict[int, list[int]]:
    """Greedy decode in a running batch (a stepper, or one like it): prompt i joins before step
    ``joins[i]`` and leaves after ``budgets[i]`` tokens. Returns each prompt's tokens."""
    rows, out, logits, step = [], {i: [] for i in range(len(prompts))}, None, 0
    while rows or step <= max(joins):
        new = [i for i, j in enumerate(joins) if j == step]
        if new:
            first = batch.add_prompts([prompts[i] for i in new], pad_token_id=0)
            logits = first if logits is None else torch.cat([logits, first])
            rows += new
        step += 1
        if not rows:
            continue
        tokens = logits.argmax(-1)
        for i, t in zip(rows, tokens.tolist()):
            out[i].append(t)
        keep = [k for k, i in enumerate(rows) if len(out[i]) < budgets[i]]
        if len(keep) < len(rows):
            batch.keep(torch.tensor(keep, dtype=torch.long))
            rows, tokens = [rows[k] for k in keep], tokens[keep]
        logits = batch.step(tokens) if rows else None
    return out


def greedy_agrees_with_the_forward(model, ids, mask, max_new_tokens: int = 8) -> torch.Tensor:
    """Greedy tokens of ``model`` (B, T_new), asserting that they are the argmax of the teacher-forced
    forward over prompt + tokens and that the concurrent decoder (threads) gives the same."""
    free = dict(max_new_tokens=max_new_tokens, eos_token_id=[], pad_token_id=0)
    new = model.generate(ids, attention_mask=mask, **free)
    full = model(input_ids=torch.cat([ids, new], 1), attention_mask=torch.cat([mask, torch.ones_like(new)], 1)).logits
    assert torch.equal(full[:, ids.shape[1] - 1 : -1].argmax(-1), new)
    assert torch.equal(model.generate(ids, attention_mask=mask, **free, mode="concurrent", backend="threads"), new)
    return new


@contextmanager
def fallbacks():
    """The reasons decoders gave for falling back to the reference loop inside the block (their
    ``FallbackWarning``s), in a list filled when the block ends."""
    from flythinker.decoding.loop import FallbackWarning

    reasons: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FallbackWarning)
        yield reasons
    reasons += [str(w.message) for w in caught if issubclass(w.category, FallbackWarning)]
