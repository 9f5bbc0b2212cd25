"""The opt-in latent gate (model.gate): training starts exactly at SFT, the gate learns, and every
path (training forward, decoders, save/load, the trainer's export) uses its value."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import greedy_agrees_with_the_forward, left_padded_batch, tiny_causal_lm

from flythinker import FlyThinker


def _pair(gate: str) -> FlyThinker:
    return FlyThinker(tiny_causal_lm(hidden=48, seed=0), tiny_causal_lm(hidden=32, seed=1), lam=0.5, gate=gate).eval()


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_a_zero_gate_is_exactly_sft_and_its_gradient_is_not_zero(gate):
    model = _pair(gate)
    ids, mask = left_padded_batch([6, 10], seed=1)
    labels = ids.masked_fill(mask == 0, -100)
    sft = model.generator(input_ids=ids, attention_mask=mask, position_ids=torch.clamp(mask.cumsum(1) - 1, min=0))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    assert torch.equal(out.logits[real], sft.logits[real])
    out.loss.backward()
    assert model.fusion.gate.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.reasoner.parameters())  # R waits for the gate


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_an_open_gate_is_used_by_every_decoder_and_survives_save_and_load(tmp_path, gate):
    model = _pair(gate)
    with torch.no_grad():
        model.fusion.gate.fill_(3.0) if gate == "scalar" else model.fusion.gate.uniform_(1.0, 4.0)
    ids, mask = left_padded_batch([7, 10], seed=2)
    new = greedy_agrees_with_the_forward(model, ids, mask)
    closed = _pair(gate)
    assert not torch.equal(
        closed.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[], pad_token_id=0), new
    )
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "flythinker.json").read_text())["gate"] == gate
    loaded = FlyThinker.from_pretrained(tmp_path / "m", attn_implementation="eager")
    assert torch.equal(loaded.fusion.gate, model.fusion.gate)
    assert torch.equal(
        loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
    )


def test_the_trainer_learns_the_gate_logs_it_and_exports_it(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "train"))
    from helpers import tiny_config

    from flythinker.train.trainer import train

    cfg = tiny_config(
        model={"gate": "scalar", "gate_lr": 0.05},
        train={"epochs": 1, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "seed": 0, "save_every": 0},
    )
    result = train(cfg, tmp_path / "run")
    logged = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    gates = [r["gate"] for r in logged if r.get("kind") == "train"]
    assert len(gates) == result.steps and gates[-1] != 0.0
    loaded = FlyThinker.from_pretrained(result.final_checkpoint)
    assert loaded.fusion.gate.item() == pytest.approx(gates[-1], abs=1e-7)


def test_a_gate_needs_flythinker_mode():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "train"))
    from helpers import tiny_config

    from flythinker.errors import UserError

    with pytest.raises(UserError, match="gate"):
        tiny_config(model={"mode": "sft", "gate": "scalar"})
    with pytest.raises(UserError, match="gate"):
        tiny_config(model={"gate": "matrix"})
