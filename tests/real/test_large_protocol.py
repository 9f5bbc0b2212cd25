"""The large protocol's config (`experiment_gitcommits_large.yaml`) as a smoke run on the CPU: full
fine-tuning of the pulled SmolLM2 as G and R on a few examples, the dev-best checkpoint decoded,
the gated row and the profile-in-R row included. Its figures mean nothing; that it runs from one command does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import GITCOMMITS, ROOT

pytestmark = [pytest.mark.real, pytest.mark.slow]
CONFIG = ROOT / "src" / "flythinker" / "configs" / "experiment_gitcommits_large.yaml"


def test_the_large_protocol_runs_from_one_command_as_a_smoke_test(tmp_path, capsys):
    from flythinker.apps.models import present
    from flythinker.cli import main

    if present().get("smollm2-135m-instruct") is None:
        pytest.skip("smollm2-135m-instruct not pulled")
    if not (GITCOMMITS / "large").is_dir():
        pytest.skip("../shared/data/gitcommits/large not present")
    sets = [
        "limit_train=4",
        "limit_eval=2",
        "seeds=[0]",
        "splits=[user_based]",
        f"out={tmp_path / 'large'}",
        "train.train.epochs=2",
        "train.train.batch_size=4",
        "train.train.warmup_steps=1",
        "train.train.keep_last=0",  # no resumable checkpoint: 3 GB of optimizer state and weights a row
        "decode.max_new_tokens=4",
        "decode.batch_size=2",
        "bertscore=false",
        "probe=false",
        "bootstrap=10",
    ]
    rows = ("flythinker_gate", "flythinker_rprofile")  # the gated row, and the profile in R's prompt alone
    args = ["experiment", str(CONFIG), "--only", ",".join(rows), *[x for s in sets for x in ("--set", s)]]
    main([*args, "--status"])
    assert "0 of 2 cells finished" in capsys.readouterr().out.replace("\n", " ")
    main(args)
    for row in rows:
        cell = tmp_path / "large" / "cells" / "user_based" / row / "seed0"
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["test_nll"] > 0 and len((cell / "predictions.jsonl").read_text().splitlines()) == 2
        result = json.loads((cell / "train" / "result.json").read_text())
        assert len(result["dev_losses"]) == 2 and (cell / "train" / "best").is_dir()  # the epoch chosen on dev
        assert not (cell / "train" / "final").exists()  # keep_weights: decoded (only the model it decoded)
    gated = tmp_path / "large" / "cells" / "user_based" / "flythinker_gate" / "seed0"
    logged = [json.loads(x) for x in Path(gated / "train" / "log.jsonl").read_text().splitlines()]
    assert any("gate" in r for r in logged if r.get("kind") == "train")
    folder = json.loads((cell / "train" / "best" / "flythinker.json").read_text())
    assert folder["variant"] == "separate_prompts"  # the rprofile row's R reads its own prompt
