"""WordNet for METEOR, offline: nltk's corpus built once from Debian's ``wordnet-base`` files.

nltk normally downloads WordNet; these machines reach no data hub, so the Debian package's files
are copied into an nltk data folder of our own (with the two small files nltk needs that Debian
does not ship) and read from there.

    >>> wn = ensure_wordnet()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

from flythinker.errors import UserError

WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/local/WordNet-3.0/dict")
WORDNET_FILES = [f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")]
WORDNET_FILES += [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")] + ["cntlist.rev"]
# WordNet 3.0's 45 lexicographer files (man 5 lexnames). nltk's reader needs this file, which the
# Debian package does not ship; line i is "NN<TAB>name<TAB>syntactic category".
LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body
verb.change verb.cognition verb.communication verb.competition verb.consumption verb.contact
verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative
verb.weather adj.ppl""".split()
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _cache_dir() -> Path:
    return Path(os.environ.get("FLYTHINKER_CACHE") or "~/.cache/flythinker").expanduser() / "nltk_data"


def _find_wordnet_source() -> Path:
    explicit = os.environ.get("FLYTHINKER_WORDNET_DIR")
    for d in [explicit] if explicit else WORDNET_DIRS:
        if (Path(d) / "data.noun").is_file():
            return Path(d)
    where = f"FLYTHINKER_WORDNET_DIR={explicit}" if explicit else ", ".join(WORDNET_DIRS)
    raise UserError(
        f"WordNet (needed for METEOR) not found in {where}: install it with "
        "`apt-get install wordnet-base` (Debian/Ubuntu) or point FLYTHINKER_WORDNET_DIR at a WordNet 3.0 dict/ folder"
    )


def ensure_wordnet():
    """Make WordNet usable by nltk offline and return a WordNet corpus reader for METEOR.

    Builds ``<cache>/nltk_data/corpora/wordnet`` (cache: $FLYTHINKER_CACHE, else
    ~/.cache/flythinker) from the Debian ``wordnet-base`` files plus a generated ``lexnames``,
    and puts ``<cache>/nltk_data`` on ``nltk.data.path``. Files are
    copied (~28 MB, once), not linked: nltk refuses symlinks that resolve outside its data roots
    and multiply-linked files.

        >>> wn = ensure_wordnet()  # doctest: +SKIP
        >>> "kid" in {l for s in wn.synsets("child") for l in s.lemma_names()}  # doctest: +SKIP
        True
    """
    return _wordnet_reader(str(_cache_dir()))


@functools.lru_cache(maxsize=4)
def _wordnet_reader(cache: str):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = Path(cache) / "corpora" / "wordnet"
    if not (root / "flythinker-complete").is_file():
        _build_wordnet(_find_wordnet_source(), root)
    if cache not in nltk.data.path:
        nltk.data.path.insert(0, cache)
    with warnings.catch_warnings():  # "multilingual functions are not available": we need English only
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(str(root), None)


def _build_wordnet(src: Path, root: Path) -> None:
    tmp = root.with_name(f"wordnet.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in WORDNET_FILES:
        if not (src / name).is_file():
            raise UserError(
                f"{src}: WordNet file {name!r} missing; reinstall with `apt-get install --reinstall wordnet-base`"
            )
        shutil.copyfile(src / name, tmp / name)
    lines = [f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)]
    (tmp / "lexnames").write_text("".join(lines))
    # nltk maps sense keys between WordNet versions through index.sense at load time; Debian has no
    # such file. An empty one means "no mapping", which only affects multilingual (OMW) lookups and
    # lemma_from_key(), not synsets()/lemma_names(), which is all METEOR uses.
    (tmp / "index.sense").write_text("")
    (tmp / "flythinker-complete").write_text(f"built from {src}\n")
    if not (root / "flythinker-complete").is_file():  # else a concurrent build won the race
        shutil.rmtree(root, ignore_errors=True)  # an incomplete earlier build
        try:
            tmp.rename(root)
        except OSError:
            pass
    shutil.rmtree(tmp, ignore_errors=True)
