"""What a model does with the profile and with the Reasoner's latents, measured by teacher forcing.

* :func:`latent_diagnostics`: does G use R's latents (NLL with own / no / another example's
  latents), and how big are they next to the token embeddings?
* :func:`profile_use`: does a model read the profile at all (NLL with the user's own profile,
  none, another user's)? Run it on a base model before fine-tuning: a model that does not read
  profiles gives FlyThinker's Reasoner nothing to build on.
"""

from __future__ import annotations

import torch

from flythinker.evaluate.nll import batches, token_nll
from flythinker.fusion import shift_latents
from flythinker.lm import positions_from_mask


def latent_diagnostics(model, tokenizer, examples, prompt_cfg, batch_size: int = 16) -> dict:
    """Does G use R's latents, and how big are they? Measured on reference texts (teacher forcing).

    * ``nll_own`` / ``nll_no_latent`` (λ = 0 at inference) / ``nll_other_latent`` (each row gets
      the latents of the next example in the batch, where both rows have tokens): if the last two
      are close to the first, G has learnt to ignore what R says about *this* user;
    * ``rho`` (ρ), ``offset_norm`` (λρ), ``token_embedding_norm`` (mean ‖E_G(s)‖ over response
      tokens) — the latent's size relative to the token it is added to;
    * ``consecutive_cos``: mean cosine of z_{i-1} and z_i over response positions (≈ 1: the
      latent barely changes while generating, i.e. it acts like a static latent).
    """
    sums = dict(own=0.0, none=0.0, other=0.0, tokens=0, emb=0.0, cos=0.0, pairs=0)
    model.eval()
    with torch.no_grad():
        for b in batches(examples, tokenizer, prompt_cfg, batch_size):
            ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]  # (B, T)
            pos = positions_from_mask(mask)
            embeds = model.generator.get_input_embeddings()(ids)  # (B, T, d_G)
            z, zmask = shift_latents(model.reason(ids, mask, pos), mask)  # (B, T, d_R), (B, T)
            other_mask = zmask * zmask.roll(1, dims=0)

            def nll(e):
                logits = model.generator(inputs_embeds=e, attention_mask=mask, position_ids=pos).logits
                return token_nll(logits, labels).sum().item()

            rho = model.rho()
            sums["own"] += nll(model.fusion(embeds, z, rho, zmask))
            sums["none"] += nll(embeds)
            sums["other"] += nll(model.fusion(embeds, z.roll(1, dims=0), rho, other_mask))
            resp = labels != -100  # (B, T) response tokens (and EOS)
            sums["tokens"] += int(resp.sum())
            sums["emb"] += embeds[resp].norm(dim=-1).sum().item()
            both = resp[:, 1:] & resp[:, :-1]
            cos = torch.nn.functional.cosine_similarity(z[:, 1:], z[:, :-1], dim=-1)  # (B, T-1)
            sums["cos"] += cos[both].sum().item()
            sums["pairs"] += int(both.sum())
    n = max(sums["tokens"], 1)
    return {"nll_own": sums["own"] / n, "nll_no_latent": sums["none"] / n, "nll_other_latent": sums["other"] / n,
            "rho": float(model.rho()), "lam": model.lam, "offset_norm": model.lam * float(model.rho()),
            "token_embedding_norm": sums["emb"] / n, "consecutive_cos": sums["cos"] / max(sums["pairs"], 1)}
