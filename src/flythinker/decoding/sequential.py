"""The reference decoder: R then G at every step, KV caches for both.

Slow on purpose (per-token time T_R + T_G) and simple enough to check by eye; every
concurrent decoder must reproduce its tokens exactly.
"""

from __future__ import annotations

import torch

from flythinker.decoding.sampling import SamplingConfig, TokenSampler
from flythinker.decoding.steps import GeneratorRunner, ReasonerRunner, RowState


@torch.no_grad()
def generate_sequential(
    model,
    input_ids: torch.Tensor,  # (B, T) left-padded prompts
    attention_mask: torch.Tensor,  # (B, T)
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_token_id: list[int],
    pad_token_id: int,
    streamer=None,
) -> torch.Tensor:  # (B, T_new)
    rows = RowState(input_ids, attention_mask, eos_token_id, pad_token_id, streamer)
    generator = GeneratorRunner(model)
    reasoner = ReasonerRunner(model) if model.lam != 0.0 else None  # λ = 0 is SFT: no R at all
    sampler = TokenSampler(sampling, device=generator.device)

    if reasoner is not None:
        latents = reasoner.prefill(input_ids, rows.attention_mask, rows.position_ids)  # (B, T, d_R)
    else:
        latents = torch.zeros(*input_ids.shape, 1)  # ignored by the fusion when λ = 0
    logits = generator.prefill(input_ids, rows.attention_mask, rows.position_ids, latents)  # (B, V)
    latent = latents[:, -1:]  # z of the last prompt token: G's input at the next step
    for step in range(max_new_tokens):
        tokens = rows.push(sampler(logits, rows.sequences.to(logits.device)).to(input_ids.device))
        if rows.all_finished or step == max_new_tokens - 1:
            break
        position = rows.last_position()
        next_latent = reasoner.step(tokens, rows.attention_mask, position) if reasoner else latent  # R reads s_n -> z_n
        logits = generator.step(tokens, latent, rows.attention_mask, position)  # G reads s_n + z_{n-1}
        latent = next_latent
    return rows.result()
