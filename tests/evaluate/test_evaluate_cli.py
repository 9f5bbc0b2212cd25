"""`flythinker evaluate` end to end on the gitcommits sample (LongLaMP format)."""

from __future__ import annotations

import json

import pytest

from flythinker.cli import main

KEYS = {"rouge1", "rougeL", "meteor", "bleu", "bertscore", "by_position", "by_user", "ci", "n", "bertscore_model"}


@pytest.fixture
def sample(gitcommits):
    path = gitcommits / "sample" / "user_based" / "test.json"
    return path, json.loads(path.read_text())


def _write_preds(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _copy_input(tmp_path, examples, name="copy.jsonl"):
    return _write_preds(tmp_path / name, [{"id": e["id"], "prediction": e["input"]} for e in examples])


def _run(*args):
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


def test_evaluate_end_to_end(sample, tmp_path, capsys):
    ref_path, examples = sample
    preds = _copy_input(tmp_path, examples)
    out = tmp_path / "eval"
    assert _run("evaluate", "--predictions", preds, "--references", ref_path, "--out", out, "--bootstrap", 200) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert KEYS <= set(m)
    assert m["n"] == len(examples) and 0 < m["rouge1"] < 1 and 0 <= m["bleu"] < 100 and 0 < m["bertscore"] < 1
    assert "MiniLM" in (out / "metrics.md").read_text()  # the table says which BERTScore model was used
    assert set(m["by_user"]) == {e["user_id"] for e in examples}
    assert list(m["by_position"]) == ["0-100", "100-300", "300+"]
    assert m["ci"]["bleu"]["low"] <= m["bleu"] <= m["ci"]["bleu"]["high"]
    assert "ROUGE-1" in capsys.readouterr().out
    # the same run again refuses to overwrite, then does with --overwrite
    assert _run("evaluate", "--predictions", preds, "--references", ref_path, "--out", out, "--no-bertscore") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        _run(
            "evaluate",
            "--predictions",
            preds,
            "--references",
            ref_path,
            "--out",
            out,
            "--no-bertscore",
            "--bootstrap",
            0,
            "--overwrite",
        )
        == 0
    )
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["bertscore"] is None and m2["ci"] == {} and m2["rouge1"] == pytest.approx(m["rouge1"])


def test_compare_two_prediction_files(sample, tmp_path):
    ref_path, examples = sample
    a = _write_preds(tmp_path / "a.jsonl", [{"id": e["id"], "prediction": e["output"]} for e in examples])
    b = _copy_input(tmp_path, examples, "b.jsonl")
    out = tmp_path / "eval"
    code = _run(
        "evaluate",
        "--predictions",
        a,
        "--references",
        ref_path,
        "--out",
        out,
        "--compare",
        b,
        "--no-bertscore",
        "--bootstrap",
        100,
        "--seed",
        1,
    )
    assert code == 0
    cmp = json.loads((out / "metrics.json").read_text())["comparison"]
    assert cmp["b"] == str(b) and cmp["seed"] == 1
    assert cmp["metrics"]["bleu"]["diff"] > 50 and cmp["metrics"]["rouge1"]["p_a_better"] == 1.0
    assert "Paired comparison" in (out / "metrics.md").read_text()


def test_mismatched_ids_exit_2(sample, tmp_path, capsys):
    ref_path, examples = sample
    rows = [{"id": e["id"], "prediction": "x"} for e in examples[1:]] + [{"id": "nope-1", "prediction": "x"}]
    preds = _write_preds(tmp_path / "p.jsonl", rows)
    assert (
        _run("evaluate", "--predictions", preds, "--references", ref_path, "--out", tmp_path / "o", "--no-bertscore")
        == 2
    )
    err = capsys.readouterr().err
    assert "1 prediction id(s)" in err and "'nope-1'" in err
    assert "1 reference(s)" in err and repr(examples[0]["id"]) in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_duplicated_or_malformed_predictions_exit_2(sample, tmp_path, capsys):
    ref_path, examples = sample
    rows = [{"id": e["id"], "prediction": "x"} for e in examples] + [{"id": examples[0]["id"], "prediction": "y"}]
    dup = _write_preds(tmp_path / "dup.jsonl", rows)
    assert (
        _run("evaluate", "--predictions", dup, "--references", ref_path, "--out", tmp_path / "o", "--no-bertscore") == 2
    )
    assert "appears twice" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prediction": "x"}\n{"id": "b"}\n')
    assert (
        _run("evaluate", "--predictions", bad, "--references", ref_path, "--out", tmp_path / "o", "--no-bertscore") == 2
    )
    assert "line 2" in capsys.readouterr().err


def test_duplicated_reference_ids_exit_2(sample, tmp_path, capsys):
    _, examples = sample
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(examples + examples[:1]))
    preds = _copy_input(tmp_path, examples)
    assert (
        _run("evaluate", "--predictions", preds, "--references", refs, "--out", tmp_path / "o", "--no-bertscore") == 2
    )
    assert examples[0]["id"] in capsys.readouterr().err


def test_limit_scores_the_first_n_references_as_generate_limit_writes_them(tmp_path, gitcommits):
    import json

    from flythinker.cli import main
    from flythinker.data.longlamp import load_examples

    refs = gitcommits / "sample" / "user_based" / "test.json"
    first = load_examples(refs, limit=3)
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"id": e.id, "prediction": e.output}) + "\n" for e in first))
    main(
        [
            "evaluate",
            "--predictions",
            str(preds),
            "--references",
            str(refs),
            "--out",
            str(tmp_path / "e"),
            "--no-bertscore",
            "--bootstrap",
            "0",
            "--limit",
            "3",
        ]
    )
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n"] == 3 and m["rouge1"] == 1.0
    with pytest.raises(SystemExit):  # without --limit the other references have no prediction
        main(
            [
                "evaluate",
                "--predictions",
                str(preds),
                "--references",
                str(refs),
                "--out",
                str(tmp_path / "f"),
                "--no-bertscore",
            ]
        )
