"""The decoding loop that every decoder runs, with its one rule for EOS and padding.

:func:`run` drives any stepper (stepper.py): the prefill, then per token sampling, the EOS and
padding rule (:class:`RowState`) and one step. The sequential reference is :func:`run` over a
:class:`~flythinker.decoding.stepper.PairStepper` with R's step in place, simple enough to check by
eye (per-token time T_R + T_G); the other decoders only pass another stepper. A decoder that cannot
run a model says why with a :class:`FallbackWarning` and decodes with the reference.
"""

from __future__ import annotations

import warnings

import torch

from flythinker.decoding.sampling import SamplingConfig, TokenSampler
from flythinker.decoding.stepper import InlineReasoner, PairStepper, SeparateReasoner


class FallbackWarning(UserWarning):
    """A decoder could not run this model and the reference loop decoded it (same tokens)."""


def fall_back(mode: str, reason: str) -> None:
    """Say, the one way decoders say it, that ``mode`` hands this call to the reference loop."""
    warnings.warn(f"{mode} decoding falls back to the reference loop: {reason}", FallbackWarning, stacklevel=3)


class RowState:
    """The rows' tokens and the one EOS / padding rule: a row ends at a token in ``eos_token_id``;
    after that it receives ``pad_token_id`` (as transformers' ``generate`` does), so a batch stays
    rectangular. The decode ends at the first step after which every row has ended.

    Whether every row has ended is read back from the device only every ``check_every`` tokens
    (a captured decoder's steps then run without a host sync); :meth:`result` cuts the tokens where
    a check every token would have stopped, so the output does not depend on it.
    """

    def __init__(self, input_ids, eos_token_id: list[int], pad_token_id: int, max_new_tokens: int, streamer=None):
        batch, self.prompt = input_ids.shape
        self.buffer = input_ids.new_empty(batch, self.prompt + max_new_tokens)  # prompt, then one column a step
        self.buffer[:, : self.prompt] = input_ids
        self.n = 0  # tokens generated
        self.eos = torch.tensor(eos_token_id, dtype=torch.long, device=input_ids.device)
        self.pad = pad_token_id
        self.finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        self.all_done = torch.zeros(max_new_tokens, dtype=torch.bool, device=input_ids.device)  # after step k
        self.streamer = streamer
        if streamer is not None:
            streamer.put(input_ids.cpu())

    @property
    def sequences(self) -> torch.Tensor:  # (B, T + n)
        return self.buffer[:, : self.prompt + self.n]

    def push(self, tokens: torch.Tensor) -> torch.Tensor:
        """Record sampled tokens (B,); rows already finished get pad. Returns the kept tokens."""
        tokens = torch.where(self.finished, torch.full_like(tokens, self.pad), tokens)
        self.buffer[:, self.prompt + self.n] = tokens
        if len(self.eos):
            self.finished |= torch.isin(tokens, self.eos)
            self.all_done[self.n] = self.finished.all()
        self.n += 1
        if self.streamer is not None:
            self.streamer.put(tokens.cpu())
        return tokens

    def ended(self, check_every: int = 1) -> bool:
        """Every row has ended (read back only every ``check_every`` tokens)."""
        return bool(len(self.eos)) and self.n % check_every == 0 and bool(self.all_done[self.n - 1])

    def result(self) -> torch.Tensor:  # (B, T_new)
        n = self.n
        if len(self.eos) and n and bool(self.all_done[:n].any()):  # the first step after which all had ended
            n = int(self.all_done[:n].long().argmax()) + 1
        if self.streamer is not None:
            self.streamer.end()
        return self.buffer[:, self.prompt : self.prompt + n]


@torch.no_grad()
def run(
    stepper,
    input_ids: torch.Tensor,  # (B, T) left-padded prompts
    attention_mask: torch.Tensor,  # (B, T)
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_token_id: list[int],
    pad_token_id: int,
    streamer=None,
) -> torch.Tensor:  # (B, T_new)
    """The decoding loop over ``stepper``; returns the new tokens on ``input_ids``' device."""
    device = stepper.device
    check_every = 1 if streamer is not None else getattr(stepper, "check_every", 1)
    ids, mask = input_ids.to(device), attention_mask.to(device)
    rows = RowState(ids, eos_token_id, pad_token_id, max_new_tokens, streamer)
    sampler = TokenSampler(sampling, device=device)
    try:
        logits = stepper.add(ids, mask)  # (B, V)
        for step in range(max_new_tokens):
            tokens = rows.push(sampler(logits, rows.sequences))
            if step == max_new_tokens - 1 or rows.ended(check_every):
                break
            logits = stepper.step(tokens)
    finally:
        stepper.finish()  # R drops its cache (a worker goes back to waiting for the next job)
    return rows.result().to(input_ids.device)


def generate_sequential(
    model,
    input_ids: torch.Tensor,  # (B, T) left-padded prompts
    attention_mask: torch.Tensor,  # (B, T)
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_token_id: list[int],
    pad_token_id: int,
    streamer=None,
    backend=None,
    reasoner_prompt: tuple[torch.Tensor, torch.Tensor] | None = None,  # R's own (ids, mask): separate prompts
) -> torch.Tensor:  # (B, T_new)
    """The reference decoder: R's step, then G's, in place."""
    return run(
        reference_stepper(model, reasoner_prompt),
        input_ids,
        attention_mask,
        max_new_tokens,
        sampling,
        eos_token_id,
        pad_token_id,
        streamer,
    )


def reference_stepper(model, reasoner_prompt=None, handle=None) -> PairStepper:
    """The pair stepper of ``model`` with R's step on ``handle`` (default: in place), over R's own
    prompt for the separate-prompts variant (``reasoner_prompt``: left-padded ids, mask)."""
    if model.reasoning == "own_prompt" and reasoner_prompt is not None:
        handle = SeparateReasoner(handle or InlineReasoner(model), *reasoner_prompt)
    return PairStepper(model, handle)
