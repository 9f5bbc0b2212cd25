"""The byte-level BPE tokenizer: exact round trip, special tokens, left padding, cache."""

from __future__ import annotations

import pytest

from flythinker.data import tokenizer as T
from flythinker.data.synthetic import make_synthetic
from flythinker.errors import UserError

UNICODE = [
    "héllo wörld ✓",
    "日本語のテキスト、句読点。",
    "emoji 🤖🧠 and a ZWJ family 👨‍👩‍👧",
    "  leading spaces, trailing spaces  ",
    "tabs\tand\nnew\r\nlines\n\n",
    "space before punctuation , . ! ?",
    "Ω≈ç√∫ \x00 \u200b zero width",
    "",
]


@pytest.fixture(scope="module")
def corpus():
    data = make_synthetic(n_users=6, examples_per_user=3, profile_size=2)
    return [r[k] for rows in data.values() for r in rows for k in ("input", "output")]


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    return T.train_tokenizer(corpus, vocab_size=600, cache_dir=tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("text", UNICODE)
def test_round_trip_arbitrary_unicode(tok, text):
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_round_trip_training_text_and_merges_learned(tok, corpus):
    ids = tok(corpus[1])["input_ids"]
    assert tok.decode(ids) == corpus[1]
    assert len(ids) < len(corpus[1].encode()) / 2  # BPE merged: well under one token per byte


def test_special_tokens_and_padding(tok):
    assert (tok.pad_token, tok.pad_token_id) == ("<|pad|>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", 1)
    assert tok.padding_side == "left"
    ids = tok("the desk lamp")["input_ids"]
    assert not set(ids) & {0, 1}  # nothing added automatically (no BOS/EOS)
    assert tok("a" + tok.eos_token)["input_ids"][-1] == 1  # eos text maps to the one eos id
    batch = tok(["a", "the desk lamp is great"], padding=True)
    assert batch["input_ids"][0][0] == 0 and batch["attention_mask"][0][0] == 0
    assert batch["attention_mask"][1] == [1] * len(batch["input_ids"][1])


def test_vocab_size_is_respected(corpus, tmp_path):
    tok = T.train_tokenizer(corpus, vocab_size=300, cache_dir=tmp_path)
    assert 258 < len(tok) <= 300


def test_second_call_loads_from_cache(corpus, tmp_path, monkeypatch):
    first = T.train_tokenizer(corpus, vocab_size=500, cache_dir=tmp_path)
    entries = [p for p in tmp_path.iterdir()]
    assert [p.name for p in entries] == [T.cache_key(corpus, 500, 2)]  # no temp dirs left

    def no_training(*a, **k):
        raise AssertionError("retrained although the cache had this tokenizer")

    monkeypatch.setattr(T, "_train_bpe", no_training)
    second = T.train_tokenizer(iter(corpus), vocab_size=500, cache_dir=tmp_path)  # any iterable
    assert second.get_vocab() == first.get_vocab()
    assert second.padding_side == "left" and second.pad_token_id == 0
    with pytest.raises(AssertionError, match="retrained"):  # other settings miss the cache
        T.train_tokenizer(corpus, vocab_size=501, cache_dir=tmp_path)


def test_cache_dir_from_env(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("FLYTHINKER_CACHE", str(tmp_path))
    T.train_tokenizer(corpus[:4], vocab_size=300)
    assert [p.name for p in (tmp_path / "tokenizers").iterdir()] == [T.cache_key(corpus[:4], 300, 2)]


def test_cache_key_depends_on_texts_and_settings():
    key = T.cache_key(["ab", "c"], 2000, 2)
    assert key == T.cache_key(["ab", "c"], 2000, 2)
    assert (
        len(
            {
                key,
                T.cache_key(["a", "bc"], 2000, 2),
                T.cache_key(["ab", "d"], 2000, 2),
                T.cache_key(["ab", "c"], 1999, 2),
                T.cache_key(["ab", "c"], 2000, 3),
            }
        )
        == 5
    )


def test_load_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = T.load_tokenizer(tmp_path)
    assert again("héllo ✓")["input_ids"] == tok("héllo ✓")["input_ids"]
    with pytest.raises(UserError, match="tokenizer.json"):
        T.load_tokenizer(tmp_path / "missing")


@pytest.mark.parametrize("texts, vocab", [([], 2000), (["", ""], 2000), (["abc"], 100), ([b"x"], 2000)])
def test_bad_input_is_user_error(texts, vocab, tmp_path):
    with pytest.raises(UserError):
        T.train_tokenizer(texts, vocab_size=vocab, cache_dir=tmp_path)
