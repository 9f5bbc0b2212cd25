"""Decoders: the one decoding loop (loop.py) run in place (the sequential reference), with
R's step overlapped (concurrent.py, worker.py, shm.py, distributed.py), or as one recorded step
over static caches (captured.py: CUDA graphs on a GPU), or, when G and R are one base, both
rows of a step in one forward (shared_base.py).

Importing this package registers both modes with :meth:`flythinker.FlyThinker.generate` (the
``flythinker`` package imports it), so the model never imports what sits above it. All decoders
take the same arguments and must return the same tokens.
"""

from __future__ import annotations

import torch

from flythinker.choices import DECODER_TABLE
from flythinker.decoding.sampling import SamplingConfig
from flythinker.decoding.streaming import stream
from flythinker.errors import UserError
from flythinker.model import register_decoder

MODES = tuple(d.name for d in DECODER_TABLE)
__all__ = ["MODES", "decode", "stream"]


def decode(
    model,
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor | None,
    *,
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_token_id: list[int],
    pad_token_id: int,
    streamer=None,
    mode: str = "sequential",
    backend=None,
    reasoner_input_ids: torch.Tensor | None = None,  # (B, T_R) R's own prompts: separate_prompts only
    reasoner_attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:  # (B, T_new)
    """Check the inputs and run the decoder of ``mode`` (``backend`` for concurrent decoding)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise UserError(f"input_ids must be (B, T) with a matching attention_mask, got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    reasoner_prompt = _reasoner_prompt(model, input_ids, reasoner_input_ids, reasoner_attention_mask, mode)
    args = (model, input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer)
    if mode == "sequential":
        from flythinker.decoding.loop import generate_sequential

        return generate_sequential(*args, reasoner_prompt)
    if mode == "concurrent":
        from flythinker.decoding.concurrent import generate_concurrent

        return generate_concurrent(*args, backend=backend, reasoner_prompt=reasoner_prompt)
    if mode == "captured":
        from flythinker.decoding.captured import generate_captured

        return generate_captured(*args, backend)
    if mode == "shared_base":
        from flythinker.decoding.shared_base import generate_shared_base

        return generate_shared_base(*args)
    raise UserError(f"mode must be one of {MODES}, got {mode!r}")


def _reasoner_prompt(model, input_ids, reasoner_input_ids, reasoner_attention_mask, mode: str):
    """R's own prompts ``(ids, mask)`` for a model whose R reads its own (the separate_prompts
    variant), checked; None for every other model, which must not be given any."""
    separate = getattr(model, "variant", None) == "separate_prompts"
    if not separate:
        if reasoner_input_ids is not None:
            raise UserError(
                "reasoner_input_ids: only a separate_prompts model (profile_in: reasoner) reads its own R prompt"
            )
        return None
    if reasoner_input_ids is None:
        raise UserError("this model's R reads its own prompt (profile_in: reasoner): pass reasoner_input_ids")
    if reasoner_attention_mask is None:
        reasoner_attention_mask = torch.ones_like(reasoner_input_ids)
    if reasoner_input_ids.dim() != 2 or reasoner_input_ids.shape[0] != input_ids.shape[0]:
        raise UserError(
            f"reasoner_input_ids must be (B, T_R) with B = {input_ids.shape[0]}, got {tuple(reasoner_input_ids.shape)}"
        )
    if reasoner_attention_mask.shape != reasoner_input_ids.shape:
        raise UserError("reasoner_attention_mask must match reasoner_input_ids")
    if mode not in ("sequential", "concurrent") and model.lam != 0.0:
        raise UserError(
            f"mode {mode!r} runs R over G's tokens; a model whose R reads its own prompt (profile_in: reasoner) "
            "decodes with mode 'sequential' or 'concurrent'"
        )
    return reasoner_input_ids, reasoner_attention_mask


def _decoder(mode: str):
    def generate(
        model,
        input_ids,
        attention_mask,
        *,
        max_new_tokens,
        do_sample,
        temperature,
        top_p,
        top_k,
        seed,
        eos_token_id,
        pad_token_id,
        streamer=None,
        backend=None,
        reasoner_input_ids=None,
        reasoner_attention_mask=None,
    ):
        sampling = SamplingConfig(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        return decode(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            streamer=streamer,
            mode=mode,
            backend=backend,
            reasoner_input_ids=reasoner_input_ids,
            reasoner_attention_mask=reasoner_attention_mask,
        )

    return generate


for _mode in MODES:
    register_decoder(_mode, _decoder(_mode))
