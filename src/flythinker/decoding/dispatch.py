"""The one entry into decoding: checks the inputs and runs the decoder the table names.

``FlyThinker.generate`` calls :func:`generate` through its entry point in
``flythinker.choices`` (``DECODE_ENTRY``), and each decoder is found by its table entry, so no
module below this one imports it. Every decoder takes the same arguments and returns the same
tokens: the new ones, (B, T_new), finished rows padded after their EOS.
"""

from __future__ import annotations

import torch

from flythinker.choices import DECODER_TABLE, resolve
from flythinker.decoding.sampling import SamplingConfig
from flythinker.errors import UserError

MODES = tuple(d.name for d in DECODER_TABLE)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,  # (B, T) left-padded prompts
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    streamer=None,
    mode: str = "sequential",
    backend=None,
    reasoner_input_ids: torch.Tensor | None = None,
    reasoner_attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:  # (B, T_new)
    """:meth:`FlyThinker.generate`'s arguments: the sampling settings and special ids resolved."""
    sampling = SamplingConfig(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    eos, pad = model._special_ids(eos_token_id, pad_token_id)
    return decode(
        model,
        input_ids,
        attention_mask,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        eos_token_id=eos,
        pad_token_id=pad,
        streamer=streamer,
        mode=mode,
        backend=backend,
        reasoner_input_ids=reasoner_input_ids,
        reasoner_attention_mask=reasoner_attention_mask,
    )


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
    """Check the inputs and run the decoder of ``mode`` (``backend``: where a decoder that takes
    one runs, a name or a decoder object)."""
    entry = {d.name: d for d in DECODER_TABLE}.get(mode)
    if entry is None:
        raise UserError(f"mode must be one of {MODES}, got {mode!r}")
    if backend is not None and not entry.backend:
        raise UserError(f"mode {mode!r} takes no backend (these do: {[d.name for d in DECODER_TABLE if d.backend]})")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise UserError(f"input_ids must be (B, T) with a matching attention_mask, got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    reasoner_prompt = _reasoner_prompt(model, input_ids, reasoner_input_ids, reasoner_attention_mask, mode)
    return resolve(entry.entry)(
        model,
        input_ids,
        attention_mask,
        max_new_tokens,
        sampling,
        eos_token_id,
        pad_token_id,
        streamer,
        backend=backend,
        reasoner_prompt=reasoner_prompt,
    )


def _reasoner_prompt(model, input_ids, reasoner_input_ids, reasoner_attention_mask, mode: str):
    """R's own prompts ``(ids, mask)`` for a model whose R reads its own (the separate_prompts
    variant), checked; None for every other model, which must not be given any."""
    if getattr(model, "variant", None) != "separate_prompts":
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
    if mode not in ("sequential", "concurrent") and model.reasoning == "own_prompt":
        raise UserError(
            f"mode {mode!r} runs R over G's tokens; a model whose R reads its own prompt (profile_in: reasoner) "
            "decodes with mode 'sequential' or 'concurrent'"
        )
    return reasoner_input_ids, reasoner_attention_mask
