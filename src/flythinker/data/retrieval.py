"""Which profile items go into the prompt: BM25 against the query (bm25s), or the most recent.

Both return item *indices in priority order* (best first), so the prompt code can drop the
least useful items when the profile budget is tight and still show the rest oldest first.
As in the LongLaMP benchmark code, an item's retrieval text is its fields joined, and the
query is the example's input — for abstracts only the part before the keyword list
("... using the following items: 1. ...").

    >>> profile = [{"title": "Cats", "text": "My cat sleeps all day."},
    ...            {"title": "Stocks", "text": "The stock market fell sharply."}]
    >>> bm25_rank(profile, "why did the stock market fall", "generic", k=1)
    [1]
"""

from __future__ import annotations

from flythinker.data.longlamp import Example, item_fields


def retrieval_text(item: dict, task: str) -> str:
    """An item's retrieval document: its task fields joined with spaces."""
    return " ".join(text for _, text in item_fields(item, task))


def retrieval_query(example: Example) -> str:
    """The BM25 query: the input (for abstracts, the title part before the keyword list)."""
    if example.task == "abstract_generation":
        head = example.input.split("items:", 1)[0].strip()
        return head or example.input
    return example.input


def chronological_order(profile: list[dict]) -> list[int]:
    """Item indices oldest first: by ``date`` (else ``year``) when every item has one, else
    list order (LongLaMP profiles are stored oldest first)."""
    for key in ("date", "year"):
        if profile and all(item.get(key) is not None for item in profile):
            try:  # a stable sort keeps list order among equal dates
                return sorted(range(len(profile)), key=lambda i: profile[i][key])
            except TypeError:  # mixed types (e.g. int and str years): trust the list order
                break
    return list(range(len(profile)))


def recent_rank(profile: list[dict], k: int | None = None) -> list[int]:
    """Indices of the ``k`` most recent items (all when k is None), newest first."""
    order = chronological_order(profile)[::-1]
    return order if k is None else order[:k]


def bm25_rank(profile: list[dict], query: str, task: str, k: int | None = None) -> list[int]:
    """Indices of the ``k`` items that score highest under BM25 against ``query``, best first.

    Ties (e.g. no shared word at all) go to the more recent item.
    """
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # its import sets DEBUG: a line per query otherwise

    if not profile:
        return []
    k = len(profile) if k is None else min(k, len(profile))
    corpus = bm25s.tokenize(
        [retrieval_text(it, task) for it in profile], stopwords="en", return_ids=False, show_progress=False
    )
    query_tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
    if not any(corpus) or not query_tokens[0]:  # nothing to match: fall back to recency
        return recent_rank(profile, k)
    retriever = bm25s.BM25()
    retriever.index(corpus, show_progress=False)
    scores = retriever.get_scores(query_tokens[0])  # (len(profile),)
    recency = {i: r for r, i in enumerate(recent_rank(profile))}
    order = sorted(range(len(profile)), key=lambda i: (-float(scores[i]), recency[i]))
    return order[:k]
