"""Padding features into batches: one collate for training, teacher-forced passes and decoding.

>>> batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_token_id=0)
>>> batch["input_ids"].tolist()
[[5, 6, 7], [0, 0, 8]]
"""

from __future__ import annotations

from flythinker.errors import UserError

IGNORE_INDEX = -100  # label value that cross-entropy skips (prompt and padding)


# Teacher-forced passes (training, NLL, diagnostics) pad on the right: with left padding every pad
# column is a query with no real key to attend to, which CUDA's attention kernels may turn into NaN
# (docs/design.md#padding). Decoding's prefill pads on the left, as batched generation needs.
TEACHER_FORCED_PADDING = "right"


def collate(features: list[dict], pad_token_id: int, padding_side: str = "left") -> dict:
    """Pad features into tensors: ``input_ids`` (B, T), ``attention_mask`` (B, T) and, when
    the features have them, ``labels`` (B, T) padded with -100 and ``reasoner_input_ids`` (R's own
    sequence, :data:`~flythinker.data.prompts.PromptConfig.profile_in` ``"reasoner"``) padded the
    same way into ``reasoner_input_ids`` / ``reasoner_attention_mask`` (B, T_R). Left padding by
    default, as batched generation needs; a feature may also be a plain list of ids.

    >>> batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_token_id=0)
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    import torch

    if padding_side not in ("left", "right"):
        raise UserError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not features:
        raise ValueError("collate() needs at least one feature")
    feats = [f if isinstance(f, dict) else {"input_ids": f} for f in features]
    with_labels = sum("labels" in f for f in feats)
    if with_labels not in (0, len(feats)):
        raise ValueError("collate(): some features have labels and some do not")
    with_reasoner = sum("reasoner_input_ids" in f for f in feats)
    if with_reasoner not in (0, len(feats)):
        raise ValueError("collate(): some features have reasoner_input_ids and some do not")
    B, T = len(feats), max(len(f["input_ids"]) for f in feats)
    batch = {
        "input_ids": torch.full((B, T), pad_token_id, dtype=torch.long),  # (B, T)
        "attention_mask": torch.zeros((B, T), dtype=torch.long),
    }  # (B, T)
    if with_labels:
        batch["labels"] = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for b, f in enumerate(feats):
        n = len(f["input_ids"])
        cols = slice(T - n, T) if padding_side == "left" else slice(0, n)
        batch["input_ids"][b, cols] = torch.as_tensor(f["input_ids"], dtype=torch.long)
        batch["attention_mask"][b, cols] = 1
        if with_labels:
            if len(f["labels"]) != n:
                raise ValueError(f"collate(): feature {b} has {len(f['labels'])} labels for {n} ids")
            batch["labels"][b, cols] = torch.as_tensor(f["labels"], dtype=torch.long)
    if with_reasoner:
        r = collate([f["reasoner_input_ids"] for f in feats], pad_token_id, padding_side)
        batch["reasoner_input_ids"], batch["reasoner_attention_mask"] = r["input_ids"], r["attention_mask"]
    return batch
