"""Teacher-forced NLL of reference texts: nats per response token (labels −100 elsewhere).

One computation for the trainer's dev loss, the experiment's dev/test NLL, the latent
diagnostics and the profile-use probe.

    >>> total, count = response_nll(model, batch)   # one batch of collate(...)  # doctest: +SKIP
    >>> mean_nll(model, tokenizer, examples, prompt_cfg)                         # doctest: +SKIP
    3.138
"""

from __future__ import annotations

import torch

from flythinker.lm import accepts_logits_to_keep


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy (B, k-1): token i+1 is predicted at position i; 0 where labels are −100.

    logits (B, k, V) of the last k ≤ T positions (k = T, or a :func:`keep_logits` forward),
    labels (B, T).
    """
    labels = labels[:, labels.shape[1] - logits.shape[1] :]  # the same k final positions
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )


def logits_needed(labels: torch.Tensor) -> int:
    """How many final positions of a batch need logits: from the one before the earliest labelled
    token to the end (rows end with their response, so that is about the longest response plus
    the padding after it, not the whole row). labels (B, T) → k in [1, T].

    >>> logits_needed(torch.tensor([[-100, -100, -100, 7, 8], [-100, -100, -100, -100, 9]]))
    3
    """
    labelled = (labels != -100).any(0).nonzero()  # columns with a label in some row
    if len(labelled) == 0:
        return 1
    return labels.shape[1] - max(int(labelled[0]) - 1, 0)


def keep_logits(model, labels: torch.Tensor) -> dict:
    """Forward keywords that keep only the logits :func:`token_nll` needs for ``labels``
    (``logits_to_keep``), or none where the model does not take them."""
    return {"logits_to_keep": logits_needed(labels)} if accepts_logits_to_keep(model) else {}


def placement(model, batch: dict) -> dict:
    """Forward keywords that let a G + R model place its latents without being given the labels
    (which would make G compute a loss over logits it was told not to keep): each row's
    ``prompt_lengths``, as :class:`~flythinker.static.StaticThinker` reads its latent at the
    prompt's last token, and R's own sequence when the batch has one. No keywords (``{}``) for G alone."""
    from accelerate.utils import extract_model_from_parallel

    from flythinker.lm import first_real_column
    from flythinker.model import FlyThinker
    from flythinker.static import last_prompt_index

    # the trainer's dev loss passes its prepared model: DDP, DeepSpeed, FSDP or torch.compile wrapped
    if not isinstance(extract_model_from_parallel(model, keep_torch_compile=False), FlyThinker):
        return {}
    mask = batch["attention_mask"]
    r_ids, r_mask = reasoner_inputs(batch)
    r_inputs = {} if r_ids is None else {"reasoner_input_ids": r_ids, "reasoner_attention_mask": r_mask}
    return {"prompt_lengths": last_prompt_index(mask, batch["labels"]) - first_real_column(mask) + 1, **r_inputs}


def reasoner_inputs(batch: dict) -> tuple:
    """R's own sequence in a collated batch, ``(reasoner_input_ids, reasoner_attention_mask)``:
    both None unless the prompts put the profile in R's alone (``profile_in: reasoner``)."""
    return batch.get("reasoner_input_ids"), batch.get("reasoner_attention_mask")


@torch.no_grad()
def response_nll(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed NLL (B,) and response-token counts (B,) of one collated batch (moved to the
    model's device first).

    Where the model takes ``logits_to_keep``, only the positions that predict a labelled token go
    through the LM head: the (B, T, V) logits of the prompt are never made. On SmolLM2 (49k
    vocabulary, 16 rows of ~540 tokens) that took 27–36% off a pass; the kept logits are the same
    numbers, up to float rounding of the smaller matmul (a row's summed NLL moved by 1e-7 relative).
    """
    from flythinker.devices import model_device, to_device

    batch = to_device(batch, model_device(model))
    labels = batch["labels"]
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        **keep_logits(model, labels),
        **placement(model, batch),
    ).logits  # (B, k, V)
    return token_nll(logits, labels).sum(1), (labels[:, 1:] != -100).sum(1)


def batches(examples, tokenizer, prompt_cfg, batch_size: int = 16, device=None):
    """Collated training batches of ``examples`` (prompt + reference), in order, on ``device``.

    Right-padded, like the trainer's: a teacher-forced pass needs no left padding, and left
    padding leaves every pad column a query that sees no real key, which CUDA's attention kernels
    may turn into NaN (docs/design.md#padding). Positions come from the mask, so the numbers are the same."""
    from flythinker.data.prompts import TEACHER_FORCED_PADDING, collate, encode_for_training
    from flythinker.devices import to_device
    from flythinker.lm import pad_id

    for i in range(0, len(examples), batch_size):
        feats = [encode_for_training(e, tokenizer, prompt_cfg) for e in examples[i : i + batch_size]]
        batch = collate(feats, pad_token_id=pad_id(tokenizer), padding_side=TEACHER_FORCED_PADDING)
        yield batch if device is None else to_device(batch, device)


def per_example_nll(model, tokenizer, examples, prompt_cfg, batch_size: int = 16, desc: str | None = None):
    """(summed NLL, response tokens) per example, in order: two float64 / int64 arrays (N,);
    ``desc`` shows a progress bar."""
    import math

    import numpy as np
    from tqdm.auto import tqdm

    sums, counts = [], []
    model.eval()
    for batch in tqdm(
        batches(examples, tokenizer, prompt_cfg, batch_size),
        total=math.ceil(len(examples) / batch_size),
        desc=desc,
        disable=desc is None,
        leave=False,
    ):
        s, n = response_nll(model, batch)
        sums += s.double().tolist()
        counts += n.tolist()
    return np.array(sums), np.array(counts)


def mean_nll(model, tokenizer, examples, prompt_cfg, batch_size: int = 16) -> float:
    """Mean cross-entropy (nats per response token) of the references under the model."""
    sums, counts = per_example_nll(model, tokenizer, examples, prompt_cfg, batch_size)
    return float(sums.sum() / max(counts.sum(), 1))
