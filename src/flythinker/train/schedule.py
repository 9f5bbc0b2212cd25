"""The learning-rate schedule of every training loop here: linear warmup, then cosine/linear decay."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based): linear warmup, then decay.

    >>> [round(lr_factor(s, 10, 2, "linear", 0.0), 2) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.12]
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def token_windows(batches, accumulation: int, normalization: str):
    """``(micro-batch, num_items_in_batch)`` pairs of a training loader. ``"sequence"``: None (each
    micro-batch's token mean). ``"tokens"``: the response tokens of the micro-batch's whole
    accumulation window, read ahead, so that every token of an optimizer step weighs the same
    whatever its micro-batch (transformers' ``num_items_in_batch``).

    >>> import torch
    >>> b = lambda n: {"labels": torch.tensor([[-100] + [1] * n])}
    >>> [n for _, n in token_windows([b(2), b(4), b(3)], 2, "tokens")]
    [6, 6, 3]
    """
    if normalization == "sequence":
        for batch in batches:
            yield batch, None
        return
    window = []
    for batch in batches:
        window.append(batch)
        if len(window) == accumulation:
            yield from _counted(window)
            window = []
    yield from _counted(window)


def _counted(window):
    n = sum(int((b["labels"][:, 1:] != -100).sum()) for b in window)
    for batch in window:
        yield batch, n
