"""Pretraining corpus: no dev/test output and no held-out author reaches the base LM."""

from __future__ import annotations

import gzip
import json

from flythinker.apps.experiment.pretrain import author_user_id, example_id, filtered_corpus, held_out


def test_corpus_excludes_eval_outputs_and_heldout_authors(gitcommits):
    commits, stats = filtered_corpus(gitcommits)
    ids, users = held_out(gitcommits)
    kept_ids = {example_id(c["sha"]) for c in commits}
    kept_users = {author_user_id(c["author"]) for c in commits}
    assert not kept_ids & ids and not kept_users & users
    assert stats["dropped_eval_outputs"] > 0 and stats["dropped_heldout_authors"] > 0
    assert stats["kept"] + stats["dropped_eval_outputs"] + stats["dropped_heldout_authors"] == stats["corpus"]
    # the id/user formulas really match the split files (else the filter would drop nothing)
    test = json.loads((gitcommits / "user_based" / "test.json").read_text())
    assert {e["user_id"] for e in test} <= users and {e["id"] for e in test} <= ids
    with gzip.open(gitcommits / "corpus.jsonl.gz", "rt") as f:
        every = {example_id(json.loads(line)["sha"]) for line in f}
    assert ids <= every  # each dev/test output is a corpus commit, and it is the one dropped
    # training outputs of temporal users are still there to learn from
    train_ids = {e["id"] for e in json.loads((gitcommits / "temporal" / "train.json").read_text())}
    assert len(train_ids & kept_ids) > len(train_ids) // 2
