"""`flythinker demo` end to end at smoke-test sizes (the full demo is the README's job)."""

from __future__ import annotations

import json

import pytest
from tiny_models import GITCOMMITS

from flythinker.cli import main


def _check_run(out, synthetic: bool):
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"sft", "flythinker"}
    for m in metrics.values():
        for key in ("rouge1", "rougeL", "bleu", "train_seconds", "ms_per_token"):
            assert m[key] is not None and m[key] >= 0
        assert ("opening_match" in m) == synthetic
    assert metrics["flythinker"]["ms_per_token_concurrent"] > 0 and "ms_per_token_concurrent" not in metrics["sft"]
    for method in metrics:
        lines = (out / "predictions" / f"{method}.jsonl").read_text().splitlines()
        assert len(lines) == 4 and all("prediction" in json.loads(x) for x in lines)
    assert (out / "config.json").is_file() and "| flythinker |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_demo_on_synthetic_data(tmp_path):
    main(["demo", "--small", "--out", str(tmp_path / "run")])
    _check_run(tmp_path / "run", synthetic=True)
    assert (tmp_path / "run" / "data" / "train.json").is_file()


@pytest.mark.slow
def test_demo_on_longlamp_format_data(tmp_path):
    main(["demo", "--small", "--out", str(tmp_path / "run"), "--data", str(GITCOMMITS / "sample" / "user_based")])
    _check_run(tmp_path / "run", synthetic=False)


def test_demo_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(out)])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == "{}"
