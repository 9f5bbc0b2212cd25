"""Decoders: the sequential reference and the concurrent think-while-generating ones.

``decode`` dispatches on ``mode`` (and ``backend`` for concurrent decoding); all decoders take
the same arguments and must return the same tokens.
"""

from __future__ import annotations

import torch

from flythinker.decoding.streaming import stream
from flythinker.errors import UserError

MODES = ("sequential", "concurrent")
__all__ = ["MODES", "decode", "stream"]


def decode(
    model,
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor | None,
    *,
    max_new_tokens: int,
    sampling,
    eos_token_id: list[int],
    pad_token_id: int,
    streamer=None,
    mode: str = "sequential",
    backend: str | None = None,
) -> torch.Tensor:  # (B, T_new)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise UserError(f"input_ids must be (B, T) with a matching attention_mask, got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    if mode == "sequential":
        from flythinker.decoding.sequential import generate_sequential

        return generate_sequential(
            model, input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer
        )
    if mode == "concurrent":
        from flythinker.decoding.concurrent import generate_concurrent

        return generate_concurrent(
            model, input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id,
            streamer, backend=backend,
        )
    raise UserError(f"mode must be one of {MODES}, got {mode!r}")
