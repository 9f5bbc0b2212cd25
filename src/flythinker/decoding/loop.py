"""The decoding loop that every decoder runs, and its reference Reasoner handles.

``run_generator`` is the one loop: G's prefill and steps, sampling, EOS and padding. Where R's
step runs is a *Reasoner handle* passed in: :class:`InlineReasoner` computes it in place (the
sequential reference, per-token time T_R + T_G, simple enough to check by eye); the concurrent
decoders pass handles that run it on a thread, a CUDA stream or a worker process, so they
produce the reference's tokens exactly. :class:`StaticReasoner` (the static-reasoning baseline)
and :class:`NoReasoner` (λ = 0) are handles of the same loop.
"""

from __future__ import annotations

import torch

from flythinker.decoding.sampling import SamplingConfig, TokenSampler
from flythinker.decoding.steps import GeneratorRunner, ReasonerRunner, RowState
from flythinker.lm import positions_from_mask


@torch.no_grad()
def run_generator(
    model,
    reasoner,  # a Reasoner handle: InlineReasoner, StaticReasoner, NoReasoner; ThreadedReasoner, RemoteReasoner
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


class StaticReasoner:
    """Static reasoning: R reads the prompt once; its last latent z_P is G's latent at every step."""

    def __init__(self, model):
        self.runner, self.z = ReasonerRunner(model), None

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:  # (B, T, d_R)
        latents = self.runner.prefill(input_ids, attention_mask, position_ids)
        self.z, self.runner.cache = latents[:, -1:], None  # (B, 1, d_R); R is not run again
        return latents

    def launch(self, tokens, attention_mask, position_ids) -> None:
        pass

    def latent(self) -> torch.Tensor:
        return self.z

    def finish(self) -> None:
        self.z = None


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
    reasoner_prompt: tuple[torch.Tensor, torch.Tensor] | None = None,  # R's own (ids, mask): separate prompts
) -> torch.Tensor:  # (B, T_new)
    return run_generator(
        model,
        reference_reasoner(model, reasoner_prompt),
        input_ids,
        attention_mask,
        max_new_tokens,
        sampling,
        eos_token_id,
        pad_token_id,
        streamer,
    )


def reference_reasoner(model, reasoner_prompt=None):
    """The in-place Reasoner handle for ``model``: none at λ = 0, static for the static variant,
    over R's own prompt for the separate-prompts variant (``reasoner_prompt``: left-padded ids, mask)."""
    if model.lam == 0.0:
        return NoReasoner()
    if reasoner_prompt is not None:
        return SeparateReasoner(InlineReasoner(model), *reasoner_prompt)
    return StaticReasoner(model) if model.variant == "static" else InlineReasoner(model)


class SeparateReasoner:
    """Any Reasoner handle over R's own prompt (``profile_in: reasoner``): the prefill reads R's
    prompt, not G's (G's prompt takes no latent), and each step's mask and positions are G's moved
    onto R's sequence (the generated tokens are the same in both). A worker process that keeps its
    own mask and positions builds them from R's prompt it was given, the same numbers."""

    def __init__(self, inner, input_ids, attention_mask):  # (B, T_R) left-padded
        self.inner, self.ids, self.mask = inner, input_ids, attention_mask.long()
        self.generator_columns, self.offset = 0, None

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:  # (B, T_R, d_R)
        self.generator_columns = input_ids.shape[1]
        self.mask = self.mask.to(attention_mask.device)
        self.offset = (self.mask.sum(1) - attention_mask.long().sum(1))[:, None]  # (B, 1) R's positions lead G's
        return self.inner.prefill(self.ids, self.mask, positions_from_mask(self.mask))

    def launch(self, tokens, attention_mask, position_ids) -> None:
        mask = torch.cat([self.mask, attention_mask[:, self.generator_columns :]], dim=1)
        self.inner.launch(tokens, mask, position_ids + self.offset.to(position_ids.device))

    def latent(self) -> torch.Tensor:
        return self.inner.latent()

    def finish(self) -> None:
        self.inner.finish()
