"""LoRA export merges every adapter kind through peft's own merge: on linear layers, on the
embedding table, DoRA's magnitudes; the exported folder gives the trained model's logits."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, tiny_config
from tiny_models import left_padded_batch

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("kind", ["embedding", "dora"])
def test_the_export_keeps_every_adapter(tmp_path, kind):
    from flythinker import FlyThinker
    from flythinker.train.assemble import build_model, build_tokenizer, load_split
    from flythinker.train.trainer import train

    lora = {
        "r": 4,
        "dropout": 0.0,
        "target_modules": LINEAR + (["embed_tokens"] if kind == "embedding" else []),
        "use_dora": kind == "dora",
    }
    spec = {"tiny": dict(TINY), "lora": lora}
    cfg = tiny_config(
        model={"generator": spec, "reasoner": dict(spec)},
        train={"epochs": 1, "batch_size": 2, "lr": 5e-2, "warmup_steps": 1, "seed": 0, "save_every": 0},
    )
    tok = build_tokenizer(cfg.model, load_split(cfg.data, "train", cfg.data.limit_train))
    model = build_model(cfg.model, tok, seed=0)
    result = train(cfg, tmp_path / "run", model=model, tokenizer=tok)
    names = [n for n, _ in model.generator.named_parameters()]
    assert any(("lora_embedding" if kind == "embedding" else "lora_magnitude") in n for n in names)
    ids, mask = left_padded_batch([6, 9], vocab=len(tok), seed=1)
    model.eval()
    with torch.no_grad():
        live = model(input_ids=ids, attention_mask=mask).logits
        exported = FlyThinker.from_pretrained(result.final_checkpoint)(input_ids=ids, attention_mask=mask).logits
        base = build_model(cfg.model, tok, seed=0).eval()(input_ids=ids, attention_mask=mask).logits
    assert (live - base).abs().max() > 1e-3  # the adapters learned something
    torch.testing.assert_close(exported, live, atol=1e-4, rtol=1e-4)
