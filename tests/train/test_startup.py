"""The start-up curve (train.eval_every) and the two opt-in start-up remedies of a pretrained G."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import SAMPLE, tiny_config

pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="gitcommits sample not present")


def _records(run, kind):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_eval_every_logs_the_dev_loss_from_step_zero(tmp_path):
    from flythinker.train.trainer import train

    result = train(tiny_config(train={"epochs": 1, "max_steps": 4, "eval_every": 2}), tmp_path)
    steps = [r["step"] for r in _records(tmp_path, "eval_step")]
    assert steps == [0, 2] and [r["step"] for r in _records(tmp_path, "eval")] == [4]
    assert len(result.dev_losses) == 1  # the step evaluations do not pick the best model


def test_lambda_warmup_ramps_lambda_and_the_saved_model_has_the_configured_one(tmp_path):
    from flythinker.auto import load_model
    from flythinker.train.trainer import train

    train(
        tiny_config(model={"lam": 0.8, "lam_warmup_steps": 4}, train={"epochs": 1, "max_steps": 4, "eval_every": 1}),
        tmp_path,
    )
    lams = [r["lam"] for r in _records(tmp_path, "eval_step")]
    assert lams == pytest.approx([0.2, 0.2, 0.4, 0.6])  # the λ of step 1, 1, 2, 3 (step 4 is the final eval)
    assert load_model(tmp_path / "final")[0].lam == pytest.approx(0.8)


def test_reasoner_first_steps_keep_the_generator_fixed_until_then(tmp_path):
    from flythinker.data.longlamp import load_examples
    from flythinker.train.assemble import build_model, build_tokenizer
    from flythinker.train.trainer import train

    cfg = tiny_config(model={"reasoner_first_steps": 2}, train={"epochs": 1, "max_steps": 2, "eval": False})
    examples = load_examples(SAMPLE, split="train", limit=8)
    tok = build_tokenizer(cfg.model, examples)
    model = build_model(cfg.model, tok, seed=0)
    g0, r0 = copy.deepcopy(model.generator.state_dict()), copy.deepcopy(model.reasoner.state_dict())
    train(cfg, tmp_path / "a", model=model, tokenizer=tok, train_examples=examples)
    assert all(torch.equal(v, model.generator.state_dict()[k]) for k, v in g0.items())
    assert any(not torch.equal(v, model.reasoner.state_dict()[k]) for k, v in r0.items())
    cfg.train.max_steps, cfg.model.reasoner_first_steps = 3, 2  # a third step: now G learns too
    model = build_model(cfg.model, tok, seed=0)
    train(cfg, tmp_path / "b", model=model, tokenizer=tok, train_examples=examples)
    assert any(not torch.equal(v, model.generator.state_dict()[k]) for k, v in g0.items())
