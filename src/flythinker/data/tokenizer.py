"""A byte-level BPE tokenizer trained on a corpus (for the demo's from-scratch tiny models).

Byte-level BPE (the GPT-2 recipe, via the ``tokenizers`` library): all 256 byte symbols are
in the vocabulary, so any UTF-8 text encodes and decodes back exactly. Two special tokens:
``<|pad|>`` (id 0) and ``<|endoftext|>`` (id 1, the eos). No BOS is added automatically —
prompts are built by the data code, which appends eos to targets itself. Padding is on the
left, as batched generation needs.

Training is cached: the key is a sha256 of the texts, the settings and the library version,
and the tokenizer is saved with ``save_pretrained`` under
``$FLYTHINKER_CACHE/tokenizers/<key>/`` (default ``~/.cache/flythinker/tokenizers/<key>/``).

    >>> tok = train_tokenizer(["hello world"] * 4, vocab_size=300)  # doctest: +SKIP
    >>> tok.decode(tok("héllo ✓")["input_ids"])                       # doctest: +SKIP
    'héllo ✓'
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from flythinker.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN)  # ids 0 and 1, in this order
_RECIPE = "bytelevel-bpe-v1"  # bump when the training recipe below changes, to invalidate caches
_N_BYTES = 256


def default_cache_dir() -> Path:
    """``$FLYTHINKER_CACHE/tokenizers``, else ``~/.cache/flythinker/tokenizers``.

    >>> default_cache_dir().name
    'tokenizers'
    """
    root = os.environ.get("FLYTHINKER_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "flythinker") / "tokenizers"


def cache_key(texts: list[str], vocab_size: int, min_frequency: int) -> str:
    """sha256 over the texts (length-prefixed, so boundaries count), settings and versions.

    >>> cache_key(["ab", "c"], 2000, 2) != cache_key(["a", "bc"], 2000, 2)
    True
    """
    import tokenizers

    h = hashlib.sha256()
    h.update(
        f"{_RECIPE}|{tokenizers.__version__}|{vocab_size}|{min_frequency}|"
        f"{'|'.join(SPECIAL_TOKENS)}|{len(texts)}\n".encode()
    )
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _train_bpe(texts: list[str], vocab_size: int, min_frequency: int):
    """Train the raw ``tokenizers.Tokenizer`` (no cache)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # no normalizer and add_prefix_space=False: decode(encode(x)) == x for every string
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, even unseen ones
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def _wrap(tok) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,  # cleanup would eat the space in " ." on decode
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2000, cache_dir: str | Path | None = None, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train (or load from the cache) a byte-level BPE tokenizer on ``texts``.

    ``texts`` is read once into memory (it is hashed and trained on). ``vocab_size`` counts
    the 256 bytes and the 2 special tokens, so it must be at least 258; the result can be
    smaller when the corpus has fewer merges to offer.

    >>> tok = train_tokenizer(["the cat sat on the mat"] * 10, vocab_size=300)  # doctest: +SKIP
    >>> tok.pad_token_id, tok.eos_token_id, tok.padding_side                     # doctest: +SKIP
    (0, 1, 'left')
    """
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        bad = next(i for i, t in enumerate(texts) if not isinstance(t, str))
        raise UserError(f"train_tokenizer: text {bad} is {type(texts[bad]).__name__}, not str")
    if not any(texts):
        raise UserError("train_tokenizer: no text to train on (all texts are empty)")
    if vocab_size < _N_BYTES + len(SPECIAL_TOKENS):
        raise UserError(
            f"train_tokenizer: vocab_size={vocab_size} is too small; byte-level BPE "
            f"needs at least {_N_BYTES + len(SPECIAL_TOKENS)} (256 bytes + 2 special)"
        )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / cache_key(texts, vocab_size, min_frequency)
    if (final / "tokenizer.json").is_file():
        return load_tokenizer(final)

    tokenizer = _wrap(_train_bpe(texts, vocab_size, min_frequency))
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name[:12]}."))
    try:
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, final)  # atomic: readers see no entry or a complete one
    except OSError:
        if not (final / "tokenizer.json").is_file():  # not a lost race with another writer
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(final)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`train_tokenizer` (or any ``save_pretrained`` folder).

    >>> tok = load_tokenizer("~/.cache/flythinker/tokenizers/<key>")  # doctest: +SKIP
    """
    from transformers import PreTrainedTokenizerFast

    path = Path(path).expanduser()
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path}: no tokenizer.json here (not a saved tokenizer folder)")
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)  # keeps pad/eos/padding side
