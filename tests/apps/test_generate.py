"""`flythinker generate`: predictions appended as they go, resumable, sharded over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny_models import GITCOMMITS

from flythinker.cli import main

DATA = GITCOMMITS / "sample" / "user_based"
ARGS = ["--split", "test", "--limit", "10", "--batch-size", "3", "--max-new-tokens", "6", "--greedy"]


def _run(model, out, *extra):
    main(["generate", "--model", str(model), "--data", str(DATA), "--out", str(out), *ARGS, *extra])


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_generate_writes_every_example_once_in_order_and_resumes(saved_tiny_model, tmp_path):
    from flythinker.data.longlamp import load_examples

    ids = [e.id for e in load_examples(DATA, split="test", limit=10)]
    full = tmp_path / "full.jsonl"
    _run(saved_tiny_model, full)
    recs = _lines(full)
    assert [r["id"] for r in recs] == ids
    assert all(set(r) >= {"id", "user_id", "prediction"} for r in recs)

    # a crash after 4 examples, the last line torn half-way: the rerun completes the file
    part = tmp_path / "resumed.jsonl"
    text = full.read_text().splitlines(keepends=True)
    part.write_text("".join(text[:4]) + text[4][: len(text[4]) // 2])
    _run(saved_tiny_model, part)
    assert part.read_text() == full.read_text()


def test_sampling_is_reproducible_and_seeded(saved_tiny_model, tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for out, seed in ((a, "1"), (b, "1"), (c, "2")):
        main(
            [
                "generate",
                "--model",
                str(saved_tiny_model),
                "--data",
                str(DATA),
                "--out",
                str(out),
                "--split",
                "test",
                "--limit",
                "6",
                "--max-new-tokens",
                "8",
                "--seed",
                seed,
            ]
        )
    assert a.read_text() == b.read_text() != c.read_text()


@pytest.mark.slow
def test_two_processes_shard_and_merge_in_dataset_order(saved_tiny_model, tmp_path):
    single = tmp_path / "single.jsonl"
    _run(saved_tiny_model, single)
    sharded = tmp_path / "sharded.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "flythinker.cli",
        "generate",
        "--model",
        str(saved_tiny_model),
        "--data",
        str(DATA),
        "--out",
        str(sharded),
        *ARGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["id"] for r in _lines(sharded)] == [r["id"] for r in _lines(single)]
    assert _lines(sharded) == _lines(single)  # greedy: same text whichever process made it
    assert not list(tmp_path.glob("sharded.jsonl.part*"))


def test_generate_builds_the_prompts_the_model_was_trained_with(tmp_path, monkeypatch, capsys):
    """A run trained with `recent`, k = 2 and short budgets is decoded with exactly its training
    prompts (the prompt part of each training sequence), not with generate's own defaults."""
    import yaml

    import flythinker.data.prompts as prompts
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig, encode_for_training
    from flythinker.lm import pad_id

    trained = {"retrieval": "recent", "k": 2, "profile_tokens": 40, "query_tokens": 24, "target_tokens": 32}
    tiny = {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2, "max_positions": 512}
    config = {
        "model": {
            "mode": "flythinker",
            "lam": 0.5,
            "generator": {"tiny": tiny},
            "reasoner": {"tiny": dict(tiny)},
            "tokenizer": "train",
            "tokenizer_vocab_size": 300,
        },
        "data": {"path": str(DATA), "limit_train": 4, "prompt": trained},
        "train": {
            "epochs": 1,
            "batch_size": 2,
            "lr": 1e-3,
            "warmup_steps": 1,
            "seed": 0,
            "save_every": 0,
            "eval": False,
        },
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("FLYTHINKER_CACHE", str(tmp_path / "cache"))
    main(["train", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), "--device", "cpu"])
    seen = []  # each prompt generate decodes from (its batches' rows, padding dropped)
    real = prompts.generation_batch

    def spy(*args, **kwargs):
        batch = real(*args, **kwargs)
        seen.extend(ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"]))
        return batch

    monkeypatch.setattr(prompts, "generation_batch", spy)
    capsys.readouterr()
    main(
        [
            "generate",
            "--model",
            str(tmp_path / "run" / "final"),
            "--data",
            str(DATA),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--split",
            "test",
            "--limit",
            "4",
            "--max-new-tokens",
            "2",
            "--greedy",
        ]
    )
    said = capsys.readouterr().out
    assert said.splitlines()[0].startswith("device: cpu") and "retrieval recent, k 2, budgets 40/24/32" in said

    from flythinker.auto import load_model

    _, tok = load_model(tmp_path / "run" / "final")
    pad_id(tok)
    exs = load_examples(DATA, split="test", limit=4)
    for cfg, same in ((PromptConfig(**trained), True), (PromptConfig(), False)):
        expected = []
        for e in exs:
            f = encode_for_training(e, tok, cfg)
            expected.append(f["input_ids"][: f["labels"].count(-100)])
        assert (seen == expected) is same


def test_a_decoder_that_falls_back_says_why_once_and_writes_the_reference_predictions(
    saved_tiny_model, tmp_path, capsys
):
    """The tiny model's R is narrower than G (no one base): shared_base decodes with the reference loop."""
    ref, shared = tmp_path / "ref.jsonl", tmp_path / "shared.jsonl"
    _run(saved_tiny_model, ref)
    capsys.readouterr()
    _run(saved_tiny_model, shared, "--mode", "shared_base")
    out = capsys.readouterr().out
    assert out.count("note: shared_base decoding falls back to the reference loop: the fusion maps") == 1
    assert shared.read_text() == ref.read_text()
