"""Checkpoints: only complete ones are seen, and a resumed run repeats the uninterrupted loss curve."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SAMPLE, tiny_config

from flythinker.train.checkpoint import STATE_FILE, latest_checkpoint, list_checkpoints
from flythinker.train.trainer import train

pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="gitcommits sample not present")


def _losses(run):
    return [
        (r["step"], r["loss"], r["lr"])
        for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ]


def test_only_complete_checkpoints_are_listed(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [
        ("step-00000004", True),
        ("step-00000012", True),
        (".step-00000016.tmp", True),
        ("step-00000020", False),
        ("step-1", True),
        ("notes", True),
    ]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / STATE_FILE).write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000012"]
    assert latest_checkpoint(tmp_path).name == "step-00000012"
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_a_kill_while_an_old_checkpoint_is_deleted_leaves_no_damaged_one_listed(tmp_path, monkeypatch):
    """keep_last deletes the oldest checkpoint; dying half-way through that deletion (its weights
    gone, its trainer_state.json still there) must not leave a folder that lists as complete.
    The next save clears the debris, and --resume goes on."""
    import shutil

    import flythinker.train.checkpoint as ckpt

    real = shutil.rmtree

    def dying(path, ignore_errors=False):
        path = __import__("pathlib").Path(path)
        if path.is_dir() and (path / STATE_FILE).is_file():
            (path / "model.safetensors").unlink()  # the first files are gone ...
            raise RuntimeError("killed while deleting an old checkpoint")  # ... then the process dies
        real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", dying)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed while deleting"):
        train(tiny_config(train={"epochs": 1, "save_every": 1, "keep_last": 1, "eval": False}), run)
    listed = list_checkpoints(run)
    assert [p.name for p in listed] == ["step-00000002"]  # step 1 was being deleted
    assert all((p / "model.safetensors").is_file() for p in listed)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real)
    again = tiny_config(train={"epochs": 1, "save_every": 1, "keep_last": 1, "eval": False, "resume": True})
    train(again, run)
    assert not list((run / "checkpoints").glob(".step-*")), "the deletion's debris was cleared"


def test_resume_after_a_crash_repeats_the_uninterrupted_run(tmp_path):
    from flythinker.data.longlamp import load_examples
    from flythinker.train.assemble import build_model, build_tokenizer

    settings = {"epochs": 3, "save_every": 3, "keep_last": 5, "warmup_steps": 2}
    # LoRA dropout on the reasoner: the curve only repeats if the RNG state is restored too
    model_cfg = {
        "reasoner": {
            "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
            "lora": {"r": 4, "dropout": 0.3},
        }
    }
    reference = train(tiny_config(model=model_cfg, train=settings), tmp_path / "ref")

    cfg = tiny_config(model=model_cfg, train=settings)
    examples = load_examples(SAMPLE, split="train", limit=8)
    tok = build_tokenizer(cfg.model, examples)
    model = build_model(cfg.model, tok, seed=cfg.train.seed)
    calls = {"n": 0}
    forward = model.forward

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:  # step 8 (4 steps + 2 dev batches an epoch): after the step-6 checkpoint
            raise RuntimeError("simulated crash")
        return forward(*args, **kwargs)

    model.forward = crashing
    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, run, model=model, tokenizer=tok)
    assert latest_checkpoint(run).name == "step-00000006"
    # debris a crash during a save could leave: never picked up
    (run / "checkpoints" / ".step-00000009.tmp").mkdir()
    (run / "checkpoints" / "step-00000010").mkdir()  # no trainer_state.json: incomplete

    resumed = train(tiny_config(model=model_cfg, train={**settings, "resume": True}), run)
    assert resumed.steps == reference.steps == 12
    ref, got = _losses(tmp_path / "ref"), _losses(run)
    assert [s for s, _, _ in got] == list(range(1, 13))
    for (s, loss_a, lr_a), (_, loss_b, lr_b) in zip(ref, got):
        assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-6), s
        assert lr_a == pytest.approx(lr_b, rel=1e-9)
    assert resumed.dev_losses == pytest.approx(reference.dev_losses, rel=1e-5)
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "ref" / "final" / "generator" / "model.safetensors")
    wb = load_file(run / "final" / "generator" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_resume_refuses_a_different_setup(tmp_path):
    from flythinker.errors import UserError

    train(tiny_config(train={"epochs": 1, "eval": False}), tmp_path)
    with pytest.raises(UserError, match=r"train.batch_size was 2, now 4"):
        train(tiny_config(train={"epochs": 1, "eval": False, "batch_size": 4, "resume": True}), tmp_path)
