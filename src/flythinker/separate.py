"""An R with its own prompt: is the latent a personalization channel at all? (issue 29 (a))

The paper's R and G read one token sequence, profile + query + response. Here R reads its own
prompt (``PromptConfig(profile_in="reasoner")``: the profile and the query) while G reads the
query alone; the response tokens are shared. Whatever G learns about the author then reaches it
only through R's latents, so this row against query-only SFT (``nonpers``) says whether the
latent carries the author.

Where latents go: the response is aligned token for token. G's input at the response token that
follows its prompt gets R's latent of R's last prompt token (z_{P_R - 1}, R having read the whole
profile), and every later response position gets R's latent of the token before it, exactly as in
:class:`~flythinker.model.FlyThinker`; G's own prompt positions get none (there is no token of R's
prompt to align them with). So G's first response token is predicted from the query alone.

    >>> cfg = PromptConfig(retrieval="recent", k=2, profile_in="reasoner")            # doctest: +SKIP
    >>> batch = collate([encode_for_training(e, tok, cfg) for e in examples], pad)    # doctest: +SKIP
    >>> SeparatePromptThinker(g, r, lam=0.05)(**batch).loss.backward()                # doctest: +SKIP
"""

from __future__ import annotations

import torch

from flythinker.errors import UserError
from flythinker.lm import first_real_column, positions_from_mask
from flythinker.model import FlyThinker
from flythinker.static import last_prompt_index

VARIANT = "separate_prompts"


def align_latents(
    latents: torch.Tensor,  # (B, T_R, d_R) R's latents over R's sequence
    reasoner_mask: torch.Tensor,  # (B, T_R)
    attention_mask: torch.Tensor,  # (B, T) G's
    last_prompt: torch.Tensor,  # (B,) column of G's last prompt token
) -> tuple[torch.Tensor, torch.Tensor]:  # (B, T, d_R), (B, T)
    """R's latents placed on G's columns: G's response column c gets R's latent at the column
    before c's token in R's sequence. Both sequences end with the same response, so that column
    is c + (end_R − end_G) − 1, whichever side the padding is on; fused at G's response columns only.

    >>> z = torch.arange(5.).view(1, 5, 1)  # R: 3 prompt tokens, 2 response tokens
    >>> zg, where = align_latents(z, torch.ones(1, 5), torch.ones(1, 3), torch.tensor([0]))
    >>> zg[0, :, 0].tolist(), where.tolist()  # G: 1 prompt token, then z of R's tokens 2 and 3
    ([1.0, 2.0, 3.0], [[0, 1, 1]])
    """
    T, device = attention_mask.shape[1], latents.device

    def end(mask):  # (B,) one past each row's last real column
        return first_real_column(mask) + mask.long().sum(1)

    shift = (end(reasoner_mask) - end(attention_mask).to(reasoner_mask.device)).to(device)  # (B,)
    cols = torch.arange(T, device=device)
    source = (cols[None] + shift[:, None] - 1).clamp(0, latents.shape[1] - 1)  # (B, T)
    z = latents.gather(1, source[..., None].expand(-1, -1, latents.shape[-1]))
    where = (cols[None] > last_prompt.to(device)[:, None]) & attention_mask.to(device).bool()
    return z, where.long()


class SeparatePromptThinker(FlyThinker, variant=VARIANT):
    """FlyThinker whose R reads its own sequence (R's prompt + the response) — see the module.

    Built when a run's ``data.prompt.profile_in`` is ``"reasoner"``; its folder records
    ``"variant": "separate_prompts"``. Every teacher-forced pass takes ``reasoner_input_ids`` /
    ``reasoner_attention_mask`` (:func:`~flythinker.data.collate.collate` makes them) and
    ``generate`` takes R's left-padded prompts under the same names; it decodes with
    ``mode="sequential"`` (the reference loop) or ``"concurrent"`` (R's step overlapped, any backend).

    >>> out = model(input_ids=ids, attention_mask=mask, labels=labels,
    ...             reasoner_input_ids=r_ids, reasoner_attention_mask=r_mask)     # doctest: +SKIP
    """

    reasoner_runs = "own_prompt"

    def read(
        self,
        input_ids,
        attention_mask,
        position_ids,
        labels=None,
        prompt_lengths=None,
        reasoner_input_ids=None,
        reasoner_attention_mask=None,
    ):
        if reasoner_input_ids is None:
            raise UserError(
                "this model's R reads its own prompt: pass reasoner_input_ids (encode_for_training with "
                "PromptConfig(profile_in='reasoner') and collate make them)"
            )
        r_mask = torch.ones_like(reasoner_input_ids) if reasoner_attention_mask is None else reasoner_attention_mask
        latents = self.reason(reasoner_input_ids, r_mask, positions_from_mask(r_mask))  # (B, T_R, d_R)
        last = last_prompt_index(attention_mask, labels, prompt_lengths)  # (B,)
        return (latents, *align_latents(latents, r_mask, attention_mask, last))

    def place_latents(self, embeds, latents, attention_mask, labels=None, prompt_lengths=None) -> torch.Tensor:
        """Decoding's prefill: G's prompt positions take no latent (R's prompt is another sequence)."""
        if labels is not None or prompt_lengths is not None:
            raise TypeError("a teacher-forced pass of this variant goes through forward() / read()")
        return embeds
