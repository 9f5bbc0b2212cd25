"""Text as it is generated: an iterator over any decoder (transformers' TextIteratorStreamer).

Every decoder already speaks transformers' streamer protocol (``put``/``end``, through the
decoding loop's RowState); this runs the decode on a background thread and yields the decoded text pieces.
Stopping early (``break``, an exception, Ctrl-C) cancels the decode at its next token, and
the decoder's own clean-up keeps a worker process in step for the next call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch


class _Cancelled(Exception):
    """Raised inside the decode when the reader has gone away."""


def _streamer(tokenizer, skip_special_tokens: bool, timeout: float | None):
    from transformers import TextIteratorStreamer

    class CancellableStreamer(TextIteratorStreamer):
        cancelled = False

        def put(self, value):
            if self.cancelled:
                raise _Cancelled()
            super().put(value)

    return CancellableStreamer(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=skip_special_tokens)


def stream(
    model,
    tokenizer,
    prompt: str | torch.Tensor,  # text, or token ids (T,) / (1, T)
    attention_mask: torch.Tensor | None = None,
    skip_special_tokens: bool = True,
    timeout: float | None = None,
    **generate_kwargs,
) -> Iterator[str]:
    """Yield the response text piece by piece while ``model.generate`` runs (batch 1).

    ``generate_kwargs`` go to ``model.generate`` (``max_new_tokens``, ``mode``, ``backend``,
    sampling settings, ...). ``timeout`` bounds the wait for each piece (seconds).

    >>> for piece in stream(model, tokenizer, "Write a review of ...", max_new_tokens=256,
    ...                     mode="concurrent", do_sample=True, temperature=0.8, top_p=0.95, seed=0):
    ...     print(piece, end="", flush=True)                                   # doctest: +SKIP
    """
    if isinstance(prompt, str):
        encoded = tokenizer(prompt, return_tensors="pt")
        prompt, attention_mask = encoded["input_ids"], encoded.get("attention_mask")
    input_ids = prompt if prompt.dim() == 2 else prompt.unsqueeze(0)  # (1, T)
    streamer = _streamer(tokenizer, skip_special_tokens, timeout)
    errors: list[BaseException] = []

    def decode():
        try:
            model.generate(input_ids, attention_mask=attention_mask, streamer=streamer, **generate_kwargs)
        except BaseException as e:  # handed to the reader below
            errors.append(e)
            streamer.end()  # wake the reader (a finished decode has called end() already)

    worker = threading.Thread(target=decode, name="flythinker-stream", daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        streamer.cancelled = True
        worker.join()
    if errors and not isinstance(errors[0], _Cancelled):
        raise errors[0]
