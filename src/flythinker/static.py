"""Static reasoning, the paper's ablation and the latent form of think-then-generate (docs/design.md#the-methods-of-the-comparison).

R reads only the prompt; its latent at the last prompt token, z_P, goes through the same fusion
(λ·ρ norm matching) into G's input at every position from the last prompt token on — the
positions that predict response tokens. Only *where* latents go differs from FlyThinker.
"""

from __future__ import annotations

import torch

from flythinker.lm import first_real_column
from flythinker.model import FlyThinker


def last_prompt_index(
    attention_mask: torch.Tensor, labels: torch.Tensor | None = None, prompt_lengths: torch.Tensor | None = None
) -> torch.Tensor:  # (B,)
    """Column of each row's last prompt token in a padded batch (left or right).

    From ``prompt_lengths`` (real prompt tokens per row), else from ``labels`` (the token before
    the first non-masked label), else the whole row is prompt (generation's prefill).

    >>> last_prompt_index(torch.tensor([[0, 1, 1, 1]]), labels=torch.tensor([[-100, -100, -100, 7]])).tolist()
    [2]
    """
    B, T = attention_mask.shape
    if prompt_lengths is not None:
        start = first_real_column(attention_mask)
        return start + prompt_lengths.to(start.device).long() - 1
    if labels is not None:
        has = labels != -100
        first = torch.where(has.any(1), has.long().argmax(1), torch.full((B,), T, device=labels.device))
        return first - 1
    return torch.full((B,), T - 1, dtype=torch.long, device=attention_mask.device)


class StaticThinker(FlyThinker, variant="static"):
    """Static reasoning: R's latent at the last prompt token, added at every response position.

    Same fusion, ρ and save format as :class:`FlyThinker` (``flythinker.json`` records
    ``"variant": "static"``, so :meth:`FlyThinker.from_pretrained` gives this class back).
    Decoding runs the one decoding step with R's latent fixed after the prompt
    (``reasoning == "once"``, read by every decoder); there is nothing to overlap, so
    ``mode="concurrent"`` decodes the same way.

    >>> model = StaticThinker(generator=g, reasoner=r, lam=0.5)                      # doctest: +SKIP
    >>> model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()     # doctest: +SKIP
    >>> model.generate(prompt_ids, attention_mask=prompt_mask, max_new_tokens=32)    # doctest: +SKIP
    """

    reasoner_runs = "once"

    def static_latent(self, latents: torch.Tensor, last: torch.Tensor) -> torch.Tensor:  # (B, T, d_R) -> (B, d_R)
        return latents[torch.arange(latents.shape[0], device=latents.device), last.to(latents.device)]

    def fused_latents(self, latents, attention_mask, labels=None, prompt_lengths=None):
        # R runs causally over everything, but only z at the last prompt token is used:
        # exactly R(prompt), since nothing after it can reach that position
        last = last_prompt_index(attention_mask, labels, prompt_lengths)  # (B,)
        z = self.static_latent(latents, last)  # (B, d_R)
        cols = torch.arange(latents.shape[1], device=attention_mask.device)
        where = (cols[None] >= last[:, None].to(cols.device)) & attention_mask.bool()  # (B, T)
        # z_P at every column (also those it is not fused at), so another row's copy is z_P as well
        return z[:, None].expand(-1, latents.shape[1], -1), where.long()
