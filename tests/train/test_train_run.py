"""Single-process training runs on tiny models: learning, outputs, modes, freezing, LoRA, NaN."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import SAMPLE, tiny_config

from flythinker import FlyThinker
from flythinker.errors import UserError
from flythinker.train.checkpoint import latest_checkpoint, list_checkpoints, load_trained
from flythinker.train.trainer import TrainingDiverged, train

pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="gitcommits sample not present")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_tiny_flythinker_run_learns_and_writes_its_run_folder(tmp_path):
    cfg = tiny_config(train={"epochs": 3, "save_every": 3, "keep_last": 2})
    run = tmp_path / "run"
    result = train(cfg, run)
    assert result.steps == 12 and len(result.losses) == 12  # 8 examples / batch 2 = 4 steps an epoch
    assert sum(result.losses[-3:]) / 3 < sum(result.losses[:3]) / 3 - 0.1
    assert len(result.dev_losses) == 3 and result.dev_losses[-1] < result.dev_losses[0]
    assert result.tokens_per_s > 0 and result.train_time_s > 0
    for name in ("config.yaml", "log.jsonl", "curves.png", "result.json", "best", "final"):
        assert (run / name).exists(), name
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "tokens_per_s", "step_time_s"} <= set(records[0])
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4, 8, 12]
    assert [p.name for p in list_checkpoints(run)] == ["step-00000009", "step-00000012"]  # keep_last=2
    assert json.loads((run / "result.json").read_text())["steps"] == 12

    loaded = load_trained(run / "final")
    assert isinstance(loaded, FlyThinker) and loaded.lam == 0.5 and loaded.tokenizer is not None
    assert result.best_dev_loss == min(result.dev_losses)


def test_keep_last_zero_writes_no_resumable_checkpoint(tmp_path):
    """keep_last=0: best/ and final/ as usual, no checkpoints/ (nor save_every, which needs one)."""
    result = train(tiny_config(train={"epochs": 2, "keep_last": 0}), tmp_path / "run")
    assert result.steps == 8 and result.last_checkpoint is None
    assert (tmp_path / "run" / "final").is_dir() and (tmp_path / "run" / "best").is_dir()
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(UserError, match="save_every.*keep_last"):
        tiny_config(train={"epochs": 1, "keep_last": 0, "save_every": 2})


def test_refuses_an_existing_run_without_resume_or_overwrite(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "eval": False})
    train(cfg, tmp_path)
    with pytest.raises(UserError, match="already holds a run.*--resume.*--overwrite"):
        train(cfg, tmp_path)
    cfg.train.overwrite = True
    assert train(cfg, tmp_path).steps == 4


def test_sft_trains_the_generator_alone_and_exports_a_transformers_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(model={"mode": "sft", "reasoner": None}, train={"epochs": 2})
    result = train(cfg, tmp_path)
    assert result.losses[-1] < result.losses[0]
    assert (tmp_path / "final" / "config.json").is_file() and not (tmp_path / "final" / "reasoner").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final", local_files_only=True)
    assert model.config.hidden_size == 32


def test_api_with_model_and_examples_passed_in_and_freeze_reasoner(tmp_path):
    from flythinker.data.longlamp import load_examples
    from flythinker.train.assemble import build_model, build_tokenizer

    cfg = tiny_config(model={"freeze_reasoner": True}, train={"epochs": 1, "lr": 5e-2})
    examples = load_examples(SAMPLE, split="train", limit=8)
    tok = build_tokenizer(cfg.model, examples)
    model = build_model(cfg.model, tok, seed=3)
    before = copy.deepcopy(model.state_dict())
    cfg.data.path = None  # everything comes from the arguments
    result = train(
        cfg,
        tmp_path,
        model=model,
        tokenizer=tok,
        train_examples=examples,
        dev_examples=load_examples(SAMPLE, split="dev", limit=2),
    )
    assert result.steps == 4 and len(result.dev_losses) == 1
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("generator.") for k in changed)
    assert any(k.startswith("generator.model.layers") for k in changed)
    assert not any(p.requires_grad for p in model.reasoner.parameters())
    # the exported model is the trained one: same logits as the weights left in memory
    ids = torch.tensor([[5, 17, 33, 2, 9, 41]])
    torch.testing.assert_close(_logits(load_trained(tmp_path / "final"), ids), _logits(model.eval(), ids))


def test_lora_trains_only_the_adapters_and_the_export_merges_them(tmp_path):
    cfg = tiny_config(
        model={
            "generator": {
                "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
                "lora": {"r": 4, "dropout": 0.0},
            },
            "reasoner": {
                "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
                "lora": {"r": 4, "dropout": 0.0, "target_modules": ["q_proj"]},
            },
        },
        train={"epochs": 1, "lr": 5e-2, "eval": False},
    )
    from flythinker.data.longlamp import load_examples
    from flythinker.train.assemble import build_model, build_tokenizer

    examples = load_examples(SAMPLE, split="train", limit=8)
    tok = build_tokenizer(cfg.model, examples)
    model = build_model(cfg.model, tok, seed=0)
    before = copy.deepcopy(model.state_dict())
    train(cfg, tmp_path, model=model, tokenizer=tok, train_examples=examples)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in model.state_dict().items()}
    assert {k for k in after if "lora_" not in k} == set(before)
    changed = {k for k in after if k not in before or not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # B starts at zero: it changed, so the update is real
    # the exported folder has no adapters, and its logits equal the adapted model's
    loaded = load_trained(tmp_path / "final")
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    ids = torch.tensor([[5, 17, 33, 2, 9, 41]])
    model.eval()
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(train={"epochs": 2, "save_every": 1, "keep_last": 3, "eval": False})
    from flythinker.data.longlamp import load_examples
    from flythinker.train.assemble import build_model, build_tokenizer

    examples = load_examples(SAMPLE, split="train", limit=8)
    tok = build_tokenizer(cfg.model, examples)
    model = build_model(cfg.model, tok, seed=0)
    calls = {"n": 0}
    forward = model.forward

    def poisoned(*args, **kwargs):  # the 3rd step's loss is NaN
        calls["n"] += 1
        out = forward(*args, **kwargs)
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    model.forward = poisoned
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3.*step-00000002"):
        train(cfg, tmp_path, model=model, tokenizer=tok, train_examples=examples)
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    assert not (tmp_path / "final").exists()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["kind"] == "diverged" and [r["step"] for r in log[:-1]] == [1, 2]


def test_generation_metrics_during_evaluation(tmp_path):
    cfg = tiny_config(train={"epochs": 1, "eval_generate": 2, "eval_max_new_tokens": 4})
    train(cfg, tmp_path)
    evals = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert len(evals) == 1 and "gen_rouge1" in evals[0] and "gen_bleu" in evals[0]


def test_gradient_checkpointing_gives_the_same_run_and_the_seed_decides_it(tmp_path):
    from flythinker.data.longlamp import load_examples
    from flythinker.train.assemble import build_model, build_tokenizer

    base = train(tiny_config(train={"epochs": 1, "eval": False}), tmp_path / "a")
    cfg = tiny_config(train={"epochs": 1, "eval": False, "gradient_checkpointing": True})
    examples = load_examples(SAMPLE, split="train", limit=8)
    tok = build_tokenizer(cfg.model, examples)
    model = build_model(cfg.model, tok, seed=0)
    ckpt = train(cfg, tmp_path / "b", model=model, tokenizer=tok, train_examples=examples)
    for lm in (model.generator, model.reasoner):
        assert getattr(lm, "is_activation_checkpointing", None) or lm.is_gradient_checkpointing
    assert ckpt.losses == pytest.approx(base.losses, rel=1e-5)
    other = train(tiny_config(train={"epochs": 1, "eval": False, "seed": 1}), tmp_path / "c")
    assert other.losses != pytest.approx(base.losses, rel=1e-3)


def test_bf16_autocast_trains_and_leaves_a_passed_model_in_fp32(tmp_path):
    from flythinker.data.longlamp import load_examples
    from flythinker.train.assemble import build_model, build_tokenizer

    cfg = tiny_config(train={"epochs": 2, "eval": False, "precision": "bf16"})
    examples = load_examples(SAMPLE, split="train", limit=8)
    tok = build_tokenizer(cfg.model, examples)
    model = build_model(cfg.model, tok, seed=0)
    result = train(cfg, tmp_path, model=model, tokenizer=tok, train_examples=examples)
    fp32 = train(tiny_config(train={"epochs": 2, "eval": False}), tmp_path / "fp32")
    assert all(map(torch.isfinite, torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0]
    assert result.losses != fp32.losses  # autocast really changed the arithmetic
    assert result.losses == pytest.approx(fp32.losses, rel=0.05)
    # the caller's model is not left under accelerate's autocast wrapper: it computes in fp32,
    # like the exported model
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(input_ids=ids).logits,
            FlyThinker.from_pretrained(result.final_checkpoint)(input_ids=ids).logits,
        )
