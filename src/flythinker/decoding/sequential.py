"""The reference decoder: R then G at every step, KV caches for both.

Slow on purpose (per-token time T_R + T_G) and simple enough to check by eye; every
concurrent decoder runs this same loop with R's step moved elsewhere (a thread, a stream, a
worker process), so they produce its tokens exactly.
"""

from __future__ import annotations

import torch

from flythinker.decoding.sampling import SamplingConfig, TokenSampler
from flythinker.decoding.steps import GeneratorRunner, ReasonerRunner, RowState


@torch.no_grad()
def run_generator(
    model,
    reasoner,  # a Reasoner handle: InlineReasoner here; ThreadedReasoner, worker.RemoteReasoner, ...
    input_ids: torch.Tensor,  # (B, T) left-padded prompts
    attention_mask: torch.Tensor,  # (B, T)
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_token_id: list[int],
    pad_token_id: int,
    streamer=None,
) -> torch.Tensor:  # (B, T_new)
    """The decoding loop. ``reasoner.launch`` starts z_n = R(s_n); ``reasoner.latent`` returns it.

    Between the two, G's step runs on s_n with z_{n-1}: a handle that computes z_n elsewhere
    makes the two overlap (think while generating); one that computes it in ``launch`` is the
    sequential reference.
    """
    rows = RowState(input_ids, attention_mask, eos_token_id, pad_token_id, streamer)
    generator = GeneratorRunner(model)
    sampler = TokenSampler(sampling, device=generator.device)
    try:
        # G's prefill needs every prompt latent, so the two prefills cannot overlap
        latents = reasoner.prefill(input_ids, rows.attention_mask, rows.position_ids)  # (B, T, d_R)
        logits = generator.prefill(input_ids, rows.attention_mask, rows.position_ids, latents)  # (B, V)
        latent = latents[:, -1:]  # z of the last prompt token: G's input at the next step
        for step in range(max_new_tokens):
            tokens = rows.push(sampler(logits, rows.sequences.to(logits.device)).to(input_ids.device))
            if rows.all_finished or step == max_new_tokens - 1:
                break
            position = rows.last_position()
            reasoner.launch(tokens, rows.attention_mask, position)  # R reads s_n -> z_n, meanwhile:
            logits = generator.step(tokens, latent, rows.attention_mask, position)  # G reads s_n + z_{n-1}
            latent = reasoner.latent()  # (B, 1, d_R) z_n, for the next step
    finally:
        reasoner.finish()  # R drops its cache (a worker goes back to waiting for the next job)
    return rows.result()


class InlineReasoner:
    """R's runner called in place: ``launch`` computes z_n before G's step (the reference)."""

    def __init__(self, model):
        self.runner, self.z = ReasonerRunner(model), None

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:  # (B, T, d_R)
        return self.runner.prefill(input_ids, attention_mask, position_ids)

    def launch(self, tokens, attention_mask, position_ids) -> None:
        self.z = self.runner.step(tokens, attention_mask, position_ids)  # (B, 1, d_R)

    def latent(self) -> torch.Tensor:
        return self.z

    def finish(self) -> None:
        self.runner.cache = self.z = None


class NoReasoner:
    """λ = 0 is SFT: R is never run; the fusion ignores these zero latents."""

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, 1)

    def launch(self, tokens, attention_mask, position_ids) -> None:
        pass

    def latent(self) -> torch.Tensor:
        return torch.zeros(1, 1, 1)

    def finish(self) -> None:
        pass


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
    reasoner = InlineReasoner(model) if model.lam != 0.0 else NoReasoner()
    return run_generator(
        model, reasoner, input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer
    )
