"""`flythinker bench train`: the table runs and the JSON has the promised keys and sane values."""

from __future__ import annotations

import json

import pytest

from flythinker.cli import main

TINY = [
    "--hidden",
    "32",
    "--layers",
    "1",
    "--vocab",
    "128",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--repeats",
    "3",
    "--warmup",
    "1",
    "--threads",
    "1",
]


def test_bench_train_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["bench", "train", "--json", str(out), "--no-memory", *TINY])
    result = json.loads(out.read_text())
    assert set(result["step_s"]) == {"sft_generator", "sft_reasoner", "flythinker"}
    assert all(v > 0 for v in result["step_s"].values())
    assert all(len(v) == 3 for v in result["step_s_all"].values())
    # the same two architectures: FlyThinker trains both, minus R's LM head (never run)
    p = result["parameters"]
    assert p["flythinker"]["trainable"] == p["sft_generator"]["trainable"] + p["sft_reasoner"]["trainable"] - 32 * 128
    ratio = result["step_s"]["flythinker"] / (result["step_s"]["sft_generator"] + result["step_s"]["sft_reasoner"])
    assert result["flythinker_over_sum"] == pytest.approx(ratio)
    assert result["peak_memory_bytes"] is None
    assert "FlyThinker / (SFT(G) + SFT(R))" in capsys.readouterr().out


@pytest.mark.slow  # three fresh processes (one per configuration), each importing torch
def test_bench_train_peak_memory_in_fresh_processes(tmp_path):
    out = tmp_path / "bench.json"
    main(["bench", "train", "--json", str(out), "--repeats", "1", *TINY[:-6], "--warmup", "1"])
    mem = json.loads(out.read_text())["peak_memory_bytes"]
    assert set(mem) == {"sft_generator", "sft_reasoner", "flythinker"} and all(v > 0 for v in mem.values())
