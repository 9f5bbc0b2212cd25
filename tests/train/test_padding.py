"""Teacher-forced passes never hand the attention a query that sees no real key (issue: NaN at
step 29 on an H200 with SDPA and left-padded training batches).

With left padding every pad column is such a query: CPU SDPA returns 0 there, CUDA's kernels make
no such promise, and one NaN in a pad row's output reaches every real token through the next
layer's 0 × NaN. The trainer's and the NLL's batches are right-padded; positions come from the
mask, so the losses are the same numbers."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, tiny_config

from flythinker.lm import fully_masked_queries


def _sdpa_without_promise(real):
    """torch's SDPA, but NaN wherever a query row has no key to attend to (as a CUDA kernel may)."""

    def sdpa(q, k, v, attn_mask=None, **kw):
        out = real(q, k, v, attn_mask=attn_mask, **kw)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            dead = ~attn_mask.any(-1, keepdim=True)  # (B, 1, T, 1)
            out = out.masked_fill(dead, float("nan"))
        return out

    return sdpa


def test_the_trainers_and_the_nlls_batches_leave_no_query_without_a_key(tmp_path):
    from flythinker.evaluate.nll import batches
    from flythinker.train.trainer import Trainer

    cfg = tiny_config(train={"epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "seed": 0, "save_every": 0})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    seen, padded = 0, 0
    for batch in list(trainer.train_dl) + list(trainer.dev_dl or []):
        padded += int((batch["attention_mask"] == 0).any())
        assert not fully_masked_queries(batch["attention_mask"]).any()
        seen += 1
    for batch in batches(trainer.dev_examples, trainer.tokenizer, trainer.prompt_cfg, batch_size=4):
        assert not fully_masked_queries(batch["attention_mask"]).any()
        seen += 1
    assert seen >= 3 and padded >= 1  # batches of unequal rows were checked


def test_training_with_a_kernel_that_gives_nan_on_keyless_queries_stays_finite(tmp_path, monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa_module

    from flythinker.train.trainer import train

    monkeypatch.setattr(
        sdpa_module.torch.nn.functional,
        "scaled_dot_product_attention",
        _sdpa_without_promise(torch.nn.functional.scaled_dot_product_attention),
    )
    for mode in ("sft", "flythinker"):
        spec = {"tiny": dict(TINY), "attn_implementation": "sdpa"}
        cfg = tiny_config(
            model={"mode": mode, "generator": spec, "reasoner": dict(spec)},
            train={"epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "seed": 0, "save_every": 0},
        )
        result = train(cfg, tmp_path / mode)  # raises on a non-finite loss or gradient norm
        assert result.steps >= 2 and all(torch.isfinite(torch.tensor(result.losses + result.dev_losses)))


@pytest.mark.parametrize("variant", ["flythinker", "static"])
def test_the_loss_is_the_same_under_left_and_right_padding(variant):
    from tiny_models import tiny_causal_lm

    from flythinker import FlyThinker
    from flythinker.data.prompts import collate
    from flythinker.static import StaticThinker

    cls = StaticThinker if variant == "static" else FlyThinker
    model = cls(tiny_causal_lm(seed=0), tiny_causal_lm(seed=1), lam=0.5).eval()
    g = torch.Generator().manual_seed(0)
    feats = []
    for n_prompt, n_resp in [(5, 4), (9, 3), (3, 7)]:
        ids = torch.randint(3, 90, (n_prompt + n_resp,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]})
    losses = {}
    for side in ("left", "right"):
        batch = collate(feats, pad_token_id=0, padding_side=side)
        with torch.no_grad():
            losses[side] = model(**batch).loss
    alone = []
    for f in feats:
        with torch.no_grad():
            alone.append(model(**collate([f], pad_token_id=0)).loss * sum(x != -100 for x in f["labels"][1:]))
    torch.testing.assert_close(losses["left"], losses["right"], rtol=1e-5, atol=1e-6)
    n = sum(sum(x != -100 for x in f["labels"][1:]) for f in feats)
    torch.testing.assert_close(losses["right"], torch.stack(alone).sum() / n, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("mode", ["sft", "flythinker"])
def test_training_with_the_default_attention_stays_finite_on_cuda(tmp_path, precision, lora, mode):
    from flythinker.train.trainer import train

    spec = {"tiny": dict(TINY), "attn_implementation": "sdpa"}  # the CUDA default, as users get it
    if lora:
        spec["lora"] = {"r": 4}
    cfg = tiny_config(
        model={"mode": mode, "generator": spec, "reasoner": dict(spec)},
        data={"limit_train": 24},
        train={
            "epochs": 2,
            "batch_size": 6,
            "lr": 1e-3,
            "warmup_steps": 1,
            "seed": 0,
            "save_every": 0,
            "precision": precision,
        },
    )
    result = train(cfg, tmp_path / "run")  # raises on a non-finite loss or gradient norm
    assert result.steps >= 6 and all(torch.isfinite(torch.tensor(result.losses + result.dev_losses)))
