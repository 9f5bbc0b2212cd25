"""What a model does with the profile and with the Reasoner's latents, measured by teacher forcing.

* :func:`latent_diagnostics`: does G use R's latents (NLL with own / no / another example's
  latents), and how big are they next to the token embeddings?
* :func:`profile_use`: does a model read the profile at all (NLL with the user's own profile,
  none, another user's)? Run it on a base model before fine-tuning: a model that does not read
  profiles gives FlyThinker's Reasoner nothing to build on.
"""

from __future__ import annotations

import torch

from flythinker.devices import model_device
from flythinker.evaluate.nll import batches, keep_logits, per_example_nll, reasoner_inputs, token_nll
from flythinker.lm import positions_from_mask


def latent_diagnostics(
    model, tokenizer, examples, prompt_cfg, batch_size: int = 16, nll_own: float | None = None
) -> dict:
    """Does G use R's latents, and how big are they? Measured on reference texts (teacher forcing).

    * ``nll_own`` / ``nll_no_latent`` (λ = 0 at inference) / ``nll_other_latent`` (each row gets
      the latents of the next example in the batch, where both rows have tokens): if the last two
      are close to the first, G has learnt to ignore what R says about *this* user;
    * ``rho`` (ρ), ``offset_norm`` (the mean norm of what is added, λρ — λ·ρ·‖g ⊙ ẑ‖ with a gate,
      whose mean ``gate`` is given too), ``token_embedding_norm`` (mean ‖E_G(s)‖ over response
      tokens) — the latent's size relative to the token it is added to;
    * ``consecutive_cos``: mean cosine of z_{i-1} and z_i over response positions (≈ 1: the
      latent barely changes while generating, i.e. it acts like a static latent);
    * ``latent_shares``: :class:`LatentShares` of the fused latents (constant / per-example /
      along the response).

    Latents are placed as the model places them (:meth:`FlyThinker.read`), so a
    :class:`~flythinker.static.StaticThinker` is measured too (its one prompt latent per example
    gives ``consecutive_cos`` 1 and no share along the response), and so is a
    :class:`~flythinker.separate.SeparatePromptThinker` (R reads its own prompt).

    ``nll_own`` is the model's teacher-forced NLL of these examples (``mean_nll``) when the
    caller has it already: it is the same quantity, so its pass is skipped.
    """
    sums = dict(own=0.0, none=0.0, other=0.0, tokens=0, emb=0.0, cos=0.0, pairs=0, offset=0.0)
    shares = LatentShares()
    model.eval()
    with torch.no_grad():
        for b in batches(examples, tokenizer, prompt_cfg, batch_size, device=model_device(model)):
            ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]  # (B, T)
            pos = positions_from_mask(mask)
            embeds = model.generator.get_input_embeddings()(ids)  # (B, T, d_G)
            _, z, zmask = model.read(ids, mask, pos, labels, None, *reasoner_inputs(b))  # (B, T, d_R), (B, T)
            # another row's per-token latents are real only where that row has tokens; a static
            # latent is the same at every column
            other_mask = zmask if model.variant == "static" else zmask * zmask.roll(1, dims=0)
            keep = keep_logits(model, labels)

            def nll(e):
                logits = model.generator(inputs_embeds=e, attention_mask=mask, position_ids=pos, **keep).logits
                return token_nll(logits, labels).sum().item()

            rho = model.rho()
            if nll_own is None:
                sums["own"] += nll(model.fusion(embeds, z, rho, zmask))
            sums["none"] += nll(embeds)
            sums["other"] += nll(model.fusion(embeds, z.roll(1, dims=0), rho, other_mask))
            resp = labels != -100  # (B, T) response tokens (and EOS)
            sums["tokens"] += int(resp.sum())
            sums["emb"] += embeds[resp].norm(dim=-1).sum().item()
            sums["offset"] += model.fusion.latent_offset(z[resp], rho).norm(dim=-1).double().sum().item()
            both = resp[:, 1:] & resp[:, :-1]
            cos = torch.nn.functional.cosine_similarity(z[:, 1:], z[:, :-1], dim=-1)  # (B, T-1)
            sums["cos"] += cos[both].sum().item()
            sums["pairs"] += int(both.sum())
            shares.add(z, resp)
    return _summary(model, sums, shares, nll_own)


def _summary(model, sums: dict, shares: "LatentShares", nll_own: float | None) -> dict:
    """:func:`latent_diagnostics`' result from its sums over response tokens."""
    n = max(sums["tokens"], 1)
    return {
        "nll_own": sums["own"] / n if nll_own is None else float(nll_own),
        "nll_no_latent": sums["none"] / n,
        "nll_other_latent": sums["other"] / n,
        "rho": float(model.rho()),
        "lam": model.lam,
        "offset_norm": sums["offset"] / n,
        **({"gate": float(model.fusion.gate.float().mean())} if model.fusion.gate is not None else {}),
        "token_embedding_norm": sums["emb"] / n,
        "consecutive_cos": sums["cos"] / max(sums["pairs"], 1),
        "latent_shares": shares.result(),
    }


class LatentShares:
    """Where the fused latent's direction lives: ẑ = z/‖z‖ at the response positions (the unit
    vector that λρ scales) splits exactly into

        ẑ_{e,i} = m + (m_e − m) + (ẑ_{e,i} − m_e),   1 = ‖m‖² + mean‖m_e − m‖² + mean‖ẑ_{e,i} − m_e‖²

    with m the mean over every position of every example and m_e example e's mean. The three
    shares are ``constant`` (the same offset added to every token: carries nothing about the user,
    and is what a fine-tune must first absorb), ``example`` (constant within an example: what a
    static latent could carry) and ``position`` (changes along the response: what thinking while
    generating adds). Weighted by positions; every share in [0, 1], summing to 1.
    """

    def __init__(self):
        self.sums: list[torch.Tensor] = []  # per example: Σ_i ẑ_{e,i} (float64)
        self.counts: list[int] = []

    def add(self, z: torch.Tensor, positions: torch.Tensor) -> None:
        """z (B, T, d) latents as fused (z_{i-1} at position i), positions (B, T) bool: the ones to count."""
        unit = torch.nn.functional.normalize(z.double(), dim=-1)
        for row, keep in zip(unit, positions):
            if keep.any():
                self.sums.append(row[keep].sum(0))
                self.counts.append(int(keep.sum()))

    def result(self) -> dict:
        if not self.counts:
            return {"constant": None, "example": None, "position": None}
        sums, counts = torch.stack(self.sums), torch.tensor(self.counts, dtype=torch.float64)  # (E, d), (E,)
        n = counts.sum()
        m = sums.sum(0) / n
        example_means = sums / counts[:, None]
        constant = float(m.square().sum())
        example = float((counts * (example_means - m).square().sum(1)).sum() / n)
        return {"constant": constant, "example": example, "position": 1.0 - constant - example}


def latent_shares(model, tokenizer, examples, prompt_cfg, batch_size: int = 16) -> dict:
    """:class:`LatentShares` of ``model``'s Reasoner on reference texts: R's passes only (no G),
    so it also measures an untrained pair before fine-tuning."""
    shares = LatentShares()
    model.eval()
    with torch.no_grad():
        for b in batches(examples, tokenizer, prompt_cfg, batch_size, device=model_device(model)):
            ids, mask = b["input_ids"], b["attention_mask"]
            _, z, _ = model.read(ids, mask, positions_from_mask(mask), b["labels"], None, *reasoner_inputs(b))
            shares.add(z, b["labels"] != -100)
    return shares.result()


def other_user_profiles(examples, seed: int = 0) -> list:
    """Each example with the profile of another user's example (a seeded pairing; None when the
    examples all belong to one user)."""
    import random
    from dataclasses import replace

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    out = []
    for i, ex in enumerate(examples):
        donors = [examples[j] for j in order[i:] + order[:i] if examples[j].user_id != ex.user_id]
        if not donors:
            return []
        out.append(replace(ex, profile=donors[0].profile))
    return out


def profile_use(
    model,
    tokenizer,
    examples,
    prompt_cfg,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 8,
    own: tuple | None = None,
) -> dict:
    """Teacher-forced NLL of the references with the user's own profile, none, and another user's.

    Returns nats per response token for each condition (the same reference tokens in all three),
    and for own − none and own − other: the difference, its 95% bootstrap CI over examples and
    the share of examples where the own profile gives the lower NLL (the win rate). ``own`` is
    ``per_example_nll`` of ``examples`` with ``prompt_cfg`` when the caller has it already (the
    same quantity: its pass is skipped).

    >>> profile_use(model, tok, load_examples(data, split="test", limit=40), PromptConfig(k=2))  # doctest: +SKIP
    {'nll': {'own': 3.138, 'none': 3.466, 'other': 3.35}, ...}
    """
    from dataclasses import replace

    import numpy as np

    conditions = {"own": (examples, prompt_cfg), "none": (examples, replace(prompt_cfg, retrieval="none"))}
    others = other_user_profiles(examples, seed)
    if others:
        conditions["other"] = (others, prompt_cfg)
    sums, counts = {}, None
    for name, (exs, cfg) in conditions.items():
        if name == "own" and own is not None:
            sums[name], n = own
        else:
            sums[name], n = per_example_nll(model, tokenizer, exs, cfg, batch_size, desc=f"NLL, {name} profile")
        assert counts is None or np.array_equal(n, counts), "the reference tokens must not depend on the prompt"
        counts = n
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(examples), size=(bootstrap, len(examples))) if bootstrap else None
    out = {
        "n": len(examples),
        "tokens": int(counts.sum()),
        "bootstrap": bootstrap,
        "seed": seed,
        "nll": {k: float(v.sum() / counts.sum()) for k, v in sums.items()},
        "paired": {},
    }
    for other in [k for k in sums if k != "own"]:
        diff = sums["own"] - sums[other]  # per-example summed NLL difference
        row = {
            "diff": float(diff.sum() / counts.sum()),
            "win_rate": float(np.mean(sums["own"] / counts < sums[other] / counts)),
        }
        if idx is not None:
            boots = diff[idx].sum(1) / counts[idx].sum(1)
            row["ci"] = {"low": float(np.percentile(boots, 2.5)), "high": float(np.percentile(boots, 97.5))}
        out["paired"][f"own-{other}"] = row
    out["per_example"] = {k: (v / counts).tolist() for k, v in sums.items()}
    return out
