"""BLEU as sacrebleu computes it, from per-sentence sufficient statistics (public API only), so
that a corpus BLEU of any resample of examples is a sum and one call: the bootstrap's need.

    >>> from flythinker.evaluate.bleu import bleu_from_stats, bleu_stats
    >>> round(bleu_from_stats(np.array(bleu_stats("the cat sat on the mat", "the cat sat on the mat"))), 6)
    100.0
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _sentence_bleu():
    from sacrebleu.metrics import BLEU

    # corpus_bleu's tokenizer (13a, case-sensitive); effective_order only quiets sacrebleu's advice
    # for sentence-level scores: the statistics do not depend on it
    return BLEU(effective_order=True)


def bleu_stats(prediction: str, reference: str) -> list[int]:
    """sacrebleu's sufficient statistics of one sentence: hyp_len, ref_len, correct[1..4], total[1..4]."""
    s = _sentence_bleu().sentence_score(prediction, [reference])
    return [s.sys_len, s.ref_len, *s.counts, *s.totals]


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU (0–100) from summed sacrebleu statistics, shape (10,), with corpus_bleu's
    defaults (exponential smoothing, order 4)."""
    from sacrebleu.metrics import BLEU

    stats = [int(x) for x in stats]
    return float(BLEU.compute_bleu(stats[2:6], stats[6:10], stats[0], stats[1], smooth_method="exp").score)
