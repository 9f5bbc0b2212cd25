"""Optional generation metrics during training: decode a few dev examples greedily and score them.

Dev loss is the selection criterion; this is a cheap look at what the model writes (BLEU,
ROUGE, METEOR from flythinker.evaluate.metrics; BERTScore is left to `flythinker evaluate`).
"""

from __future__ import annotations

import torch

from flythinker.lm import eos_ids, pad_id
from flythinker.model import FlyThinker


@torch.no_grad()
def greedy_new_tokens(model, tokenizer, ids, mask, max_new_tokens: int, **reasoner_inputs) -> torch.Tensor:
    """Greedy new tokens (B, T_new) of a training module: a FlyThinker's own decoder (R's own prompt in
    ``reasoner_inputs`` for the separate-prompts variant), or the SFT wrapper's Generator alone."""
    eos, pad = eos_ids(model.generator, tokenizer), pad_id(tokenizer)
    if isinstance(model, FlyThinker):
        return model.generate(
            ids,
            attention_mask=mask,
            **reasoner_inputs,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    out = model.generator.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return out[:, ids.shape[1] :]


@torch.no_grad()
def generation_metrics(model, tokenizer, examples, prompt_cfg, max_new_tokens: int) -> dict:
    """``{"gen_bleu", "gen_rouge1", "gen_rougeL", "gen_meteor", "gen_sample"}`` for ``examples``.

    ``model`` is the unwrapped training module (a FlyThinker, or the SFT wrapper with a
    ``generator``); it is put back in training mode afterwards.

    >>> generation_metrics(model, tok, dev[:4], PromptConfig(), max_new_tokens=64)  # doctest: +SKIP
    """
    from flythinker.data.prompts import generation_batch
    from flythinker.evaluate.metrics import compute_metrics

    was_training = model.training
    model.eval()
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    predictions = []
    for ex in examples:
        batch = {k: v.to(device) for k, v in generation_batch([ex], tokenizer, prompt_cfg, pad).items()}
        ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")  # (1, T); R's own prompt stays in batch
        new = greedy_new_tokens(model, tokenizer, ids, mask, max_new_tokens, **batch)  # (1, T_new)
        predictions.append(tokenizer.decode(new[0], skip_special_tokens=True))
    model.train(was_training)
    m = compute_metrics(
        predictions, [ex.output for ex in examples], bertscore=False, bootstrap=0, positions=False, meteor=None
    )
    out = {f"gen_{k}": m[k] for k in ("bleu", "rouge1", "rougeL", "meteor") if isinstance(m.get(k), (int, float))}
    out["gen_sample"] = predictions[0][:200] if predictions else ""
    return out
