"""The paper's metrics against the libraries they wrap, plus positions, users, bootstrap, comparison."""

from __future__ import annotations

import random

import numpy as np
import pytest

from flythinker.errors import UserError
from flythinker.evaluate import metrics as M
from flythinker.evaluate.report import format_comparison, format_table

PAIRS = [
    ("The cat sat on the mat near the door.", "A cat was sitting on the mat by the door."),
    ("Fix the race in the ref update code path.", "Fix a race condition in the ref update code."),
    ("completely unrelated words here", "This commit teaches git log a new option."),
]
WORDS = "the a commit fix add test ref code path git log option when we do not this that is in on for to".split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _noisy(rng: random.Random, ref: str, keep: float) -> str:
    return " ".join(w if rng.random() < keep else rng.choice(WORDS) for w in ref.split())


def test_identical_prediction_scores_perfect():
    refs = [p for _, p in PAIRS]
    m = M.compute_metrics(refs, refs, bertscore=False, bootstrap=0)
    assert m["bleu"] == pytest.approx(100.0)
    assert m["rouge1"] == pytest.approx(1.0) and m["rougeL"] == pytest.approx(1.0)
    assert m["meteor"] > 0.95  # METEOR keeps a small fragmentation penalty even for a perfect match
    assert m["bertscore"] is None and m["bertscore_model"] is None and m["n"] == 3


def test_agrees_with_rouge_score_and_sacrebleu():
    import sacrebleu
    from rouge_score import rouge_scorer

    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    m = M.compute_metrics(preds, refs, bertscore=False, bootstrap=0, positions=False)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(preds, refs)]
    assert m["rouge1"] == pytest.approx(np.mean([d["rouge1"].fmeasure for d in direct]))
    assert m["rougeL"] == pytest.approx(np.mean([d["rougeL"].fmeasure for d in direct]))
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert 0 < m["bleu"] < 100 and 0 < m["rouge1"] < 1


def test_bleu_from_summed_statistics_matches_corpus_bleu_on_subsets():
    import sacrebleu

    rng = random.Random(1)
    refs = [_text(rng, rng.randint(5, 40)) for _ in range(30)]
    preds = [_noisy(rng, r, 0.6) for r in refs]
    s = M.score_examples(preds, refs, bertscore=False)
    for idx in ([0, 1, 2], list(range(30)), [5, 5, 7, 29]):  # repeated rows = a bootstrap resample
        expected = sacrebleu.corpus_bleu([preds[i] for i in idx], [[refs[i] for i in idx]]).score
        assert M.bleu_from_stats(s.bleu_stats[idx].sum(0)) == pytest.approx(expected)


class _NoSynonyms:
    """A WordNet with no synsets: METEOR falls back to exact + stem matches only."""

    def synsets(self, *args, **kwargs):
        return []


def test_meteor_rewards_wordnet_synonyms():
    from nltk.translate.meteor_score import meteor_score

    ref, hyp = "the child was happy at home", "the kid was glad at home"
    m = M.compute_metrics([hyp], [ref], bertscore=False, bootstrap=0, positions=False)
    exact_only = meteor_score([ref.split()], hyp.split(), wordnet=_NoSynonyms())
    with_wordnet = meteor_score([ref.split()], hyp.split(), wordnet=M.ensure_wordnet())
    assert m["meteor"] == pytest.approx(with_wordnet)
    assert m["meteor"] > exact_only + 0.1  # kid~child and glad~happy now align


def test_ensure_wordnet_builds_nltk_corpus(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setenv("FLYTHINKER_CACHE", str(tmp_path))
    wn = M.ensure_wordnet()
    root = tmp_path / "nltk_data" / "corpora" / "wordnet"
    lex = (root / "lexnames").read_text().splitlines()
    assert len(lex) == 45 and lex[3] == "03\tnoun.Tops\t1" and lex[44] == "44\tadj.ppl\t3"
    assert str(tmp_path / "nltk_data") in nltk.data.path
    assert "kid" in {name for s in wn.synsets("child") for name in s.lemma_names()}
    # lexnames line up with the lexicographer numbers in the data files
    assert wn.synset("dog.n.01").lexname() == "noun.animal" and wn.synset("run.v.01").lexname() == "verb.motion"


def test_ensure_wordnet_missing_is_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYTHINKER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLYTHINKER_WORDNET_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="apt-get install wordnet-base"):
        M.ensure_wordnet()


def test_bootstrap_ci_contains_estimate_and_shrinks_with_more_data():
    rng = random.Random(0)
    refs = [_text(rng, rng.randint(10, 60)) for _ in range(400)]
    preds = [_noisy(rng, r, rng.random()) for r in refs]
    small = M.compute_metrics(preds[:25], refs[:25], bertscore=False, bootstrap=500, positions=False)
    large = M.compute_metrics(preds, refs, bertscore=False, bootstrap=500, positions=False)
    for m in ("rouge1", "rougeL", "meteor", "bleu"):
        for res in (small, large):
            assert res["ci"][m]["low"] <= res[m] <= res["ci"][m]["high"], m
        width = lambda r: r["ci"][m]["high"] - r["ci"][m]["low"]  # noqa: E731
        assert width(large) < 0.6 * width(small), m  # ~1/sqrt(16) expected
    again = M.compute_metrics(preds[:25], refs[:25], bertscore=False, bootstrap=500, positions=False)
    assert again["ci"] == small["ci"]  # same seed, same intervals


def test_split_by_position_rule():
    ref = " ".join(f"r{i}" for i in range(150))
    pred = " ".join(f"p{i}" for i in range(120))
    segs = M.split_by_position(pred, ref)
    assert segs[2] is None  # the reference never reaches word 300
    assert segs[0] == (" ".join(f"p{i}" for i in range(100)), " ".join(f"r{i}" for i in range(100)))
    assert segs[1] == (" ".join(f"p{i}" for i in range(100, 120)), " ".join(f"r{i}" for i in range(100, 150)))
    # a prediction that stops early gets an empty segment where the reference goes on
    assert M.split_by_position("a b", ref)[1] == ("", " ".join(f"r{i}" for i in range(100, 150)))
    assert M.position_names() == ["0-100", "100-300", "300+"]


def test_by_position_sees_drift_late_in_the_response():
    rng = random.Random(2)
    refs = [_text(rng, 350) for _ in range(4)] + [_text(rng, 50)]
    # right for the first 100 words, then unrelated text (the drift the paper measures)
    preds = [" ".join(r.split()[:100] + ["zzz"] * (len(r.split()) - 100)) for r in refs[:4]] + [refs[4]]
    m = M.compute_metrics(preds, refs, bertscore=False, bootstrap=0)
    pos = m["by_position"]
    assert [pos[k]["n"] for k in ("0-100", "100-300", "300+")] == [5, 4, 4]
    assert pos["0-100"]["rouge1"] == pytest.approx(1.0) and pos["0-100"]["bleu"] == pytest.approx(100.0)
    assert pos["100-300"]["rouge1"] == 0.0 and pos["300+"]["bleu"] == 0.0


def test_by_user_breakdown_equals_scoring_each_user_alone():
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    m = M.compute_metrics(preds, refs, user_ids=["u1", "u2", "u1"], bertscore=False, bootstrap=0, positions=False)
    alone = M.compute_metrics([preds[0], preds[2]], [refs[0], refs[2]], bertscore=False, bootstrap=0, positions=False)
    assert sorted(m["by_user"]) == ["u1", "u2"] and m["by_user"]["u1"]["n"] == 2
    for k in ("rouge1", "rougeL", "meteor", "bleu"):
        assert m["by_user"]["u1"][k] == pytest.approx(alone[k])


def test_paired_comparison():
    rng = random.Random(3)
    refs = [_text(rng, 30) for _ in range(40)]
    good = [_noisy(rng, r, 0.9) for r in refs]
    bad = [_noisy(rng, r, 0.3) for r in refs]
    c = M.paired_comparison(good, bad, refs, bertscore=False, bootstrap=300)
    for m in ("rouge1", "rougeL", "meteor", "bleu"):
        row = c["metrics"][m]
        assert row["diff"] == pytest.approx(row["a"] - row["b"]) and row["diff"] > 0
        assert row["ci"]["low"] > 0 and row["p_a_better"] == 1.0
    assert "bertscore" not in c["metrics"]
    flipped = M.paired_comparison(bad, good, refs, bertscore=False, bootstrap=300)
    assert flipped["metrics"]["bleu"]["diff"] == pytest.approx(-c["metrics"]["bleu"]["diff"])
    assert flipped["metrics"]["bleu"]["p_a_better"] == 0.0
    same = M.paired_comparison(good, good, refs, bertscore=False, bootstrap=50)
    assert same["metrics"]["rouge1"]["diff"] == 0 and same["metrics"]["rouge1"]["p_a_better"] == 0.0
    assert "| BLEU |" in format_comparison(c, "good", "bad")


def test_bertscore_local_model_two_pairs():
    m = M.compute_metrics(
        ["the kid was glad at home", "the kid was glad at home"],
        ["the kid was glad at home", "the build fails on windows"],
        bootstrap=0,
        positions=False,
    )
    s = M.score_examples(
        ["the kid was glad at home", "", "the kid was glad at home"],
        ["the child was happy at home", "x", "the build fails on windows"],
        bertscore=True,
    )
    assert m["bertscore_model"].endswith("model") and m["bertscore_layers"] == 6
    assert s.bertscore[0] > s.bertscore[2] and s.bertscore[1] == 0.0  # empty prediction scores 0
    assert m["bertscore"] == pytest.approx((1.0 + s.bertscore[2]) / 2, abs=1e-4)


def test_bertscore_model_must_be_local(tmp_path):
    with pytest.raises(UserError, match="not a local model folder"):
        M.score_examples(["a"], ["a"], bertscore=True, bertscore_model=str(tmp_path / "roberta-large"))


def test_format_table_has_every_metric_and_breakdown():
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    m = M.compute_metrics(preds, refs, user_ids=["u1", "u2", "u1"], bertscore=False, bootstrap=100)
    table = format_table(m)
    for name in ("ROUGE-1", "ROUGE-L", "METEOR", "BLEU", "BERTScore", "95% CI", "0-100 (n=3)", "| u1 | 2 |"):
        assert name in table
    assert f"{m['bleu']:.2f}" in table


def test_meteor_is_optional_only_when_asked(tmp_path, monkeypatch):
    """Without WordNet, meteor=None skips METEOR with a warning; the default still refuses."""
    import pytest as _pytest

    from flythinker.errors import UserError
    from flythinker.evaluate.metrics import compute_metrics

    monkeypatch.setenv("FLYTHINKER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLYTHINKER_WORDNET_DIR", str(tmp_path / "no-wordnet"))
    preds, refs = ["the kid was glad at home today"], ["the child was happy at home today"]
    with _pytest.warns(UserWarning, match="METEOR skipped"):
        m = compute_metrics(preds, refs, bertscore=False, bootstrap=20, meteor=None)
    assert m["meteor"] is None and "meteor" not in m["ci"] and m["rouge1"] > 0
    assert m["by_position"]["0-100"]["meteor"] is None
    with _pytest.raises(UserError, match="wordnet-base"):
        compute_metrics(preds, refs, bertscore=False, bootstrap=0)


def test_the_public_sacrebleu_api_rescores_a_committed_cell_exactly():
    """BLEU from sacrebleu's public API (sentence statistics, BLEU.compute_bleu) gives the committed
    reproduction's numbers to the last digit, as the private API it replaced did."""
    import json

    import sacrebleu
    from tiny_models import GITCOMMITS, ROOT

    from flythinker.data.predictions import read_predictions
    from flythinker.evaluate.metrics import aggregate, score_examples

    cell = ROOT / "results" / "gitcommits_smollm2" / "cells" / "user_based" / "sft" / "seed0"
    refs = json.loads((GITCOMMITS / "user_based" / "test.json").read_text())
    if not cell.is_dir() or not refs:
        pytest.skip("the committed cell or the gitcommits test split is missing")
    preds = read_predictions(cell / "predictions.jsonl")
    refs = refs if isinstance(refs, list) else refs["examples"]
    p = [preds[r["id"]] for r in refs]
    o = [r["output"] for r in refs]
    got = aggregate(score_examples(p, o, bertscore=False, meteor=False))
    committed = json.loads((cell / "metrics.json").read_text())
    assert got["bleu"] == committed["bleu"] == sacrebleu.corpus_bleu(p, [o]).score
    assert (got["rouge1"], got["rougeL"]) == (committed["rouge1"], committed["rougeL"])
