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


def test_adapters_of_one_base_are_kept_unmerged_and_decode_as_one_base(tmp_path, capsys):
    """A LoRA run whose G and R adapt one base also writes adapters/ (the base once, two adapters);
    loaded with adapters=True, G and R share the base's tensors, give the live model's logits, and
    shared-base decoding gives the merged export's reference tokens."""
    from flythinker.adapters import has_adapters
    from flythinker.auto import load_model
    from flythinker.decoding.shared_base import unshared_reason
    from flythinker.train.assemble import build_model, build_tokenizer, load_split
    from flythinker.train.trainer import train

    spec = {"tiny": dict(TINY), "lora": {"r": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}}
    cfg = tiny_config(
        model={"generator": spec, "reasoner": dict(spec)},
        train={"epochs": 1, "batch_size": 2, "lr": 5e-2, "warmup_steps": 1, "seed": 0, "save_every": 0},
    )
    tok = build_tokenizer(cfg.model, load_split(cfg.data, "train", cfg.data.limit_train))
    model = build_model(cfg.model, tok, seed=0)
    g_state, r_state = model.generator.state_dict(), model.reasoner.state_dict()
    with torch.no_grad():  # one base under both adapters (as when G and R load one pretrained model)
        for key, value in r_state.items():
            if "lora_" not in key:
                value.copy_(g_state[key])
    result = train(cfg, tmp_path / "run", model=model, tokenizer=tok)
    final = result.final_checkpoint
    assert has_adapters(final) and (final / "generator" / "model.safetensors").is_file()  # merged export kept
    ids, mask = left_padded_batch([6, 9], vocab=len(tok), seed=1)
    model.eval()
    merged, _ = load_model(final)
    shared, _ = load_model(final, adapters=True)
    g_base = {p.data_ptr() for n, p in shared.generator.named_parameters() if "lora_" not in n}
    assert all(p.data_ptr() in g_base for n, p in shared.reasoner.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        live = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(shared(input_ids=ids, attention_mask=mask).logits, live, atol=1e-4, rtol=1e-4)
    assert unshared_reason(shared) is None
    free = dict(eos_token_id=[], pad_token_id=0, max_new_tokens=12)
    ref = merged.generate(ids, attention_mask=mask, **free)
    assert torch.equal(shared.generate(ids, attention_mask=mask, mode="shared_base", **free), ref)
    from tiny_models import GITCOMMITS

    from flythinker.cli import main

    out, data = tmp_path / "preds.jsonl", GITCOMMITS / "sample" / "user_based"
    args = ["--data", str(data), "--split", "test", "--limit", "4", "--max-new-tokens", "4", "--greedy"]
    main(["generate", "--model", str(final), "--out", str(out), "--mode", "shared_base", *args])
    assert (
        "weights: one base and two LoRA adapters" in capsys.readouterr().out and len(out.read_text().splitlines()) == 4
    )
