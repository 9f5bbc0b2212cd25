"""A small synthetic personalized long-form dataset in LongLaMP format, for the demo and tests.

Every user is a product reviewer with fixed writing habits: a signature opening and sign-off,
a synonym for each word slot ("terrific" where another user says "fine"), a typical length,
a tone (exclamation marks, interjections, contractions), a positivity bias, a pet concern
mentioned in every review, and optional habits (a star rating, a recommendation). The *query*
("Write a review of the desk lamp about its price.") fixes what the review is about; the
*user* fixes how it is written. So a query-only model gets the topic right, and only a model
that reads the profile (the same user's earlier reviews) can get the style right.

The vocabulary is a few hundred word types and reviews are ~40-150 words, so a model with a
few million parameters learns the data in minutes on a CPU. Everything is drawn from
``random.Random`` instances seeded from ``(seed, user index)``: the same seed gives the same
data, and a user's habits do not change when ``n_users`` does.

    >>> data = make_synthetic(n_users=6, examples_per_user=2, profile_size=3, seed=0)
    >>> sorted(data), len(data["train"]), sorted(data["train"][0])
    (['dev', 'test', 'train'], 8, ['date', 'id', 'input', 'output', 'profile', 'user_id'])
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flythinker.errors import UserError

ITEMS = ("desk lamp", "coffee grinder", "hiking backpack", "phone charger", "electric kettle",
         "rain jacket", "office chair", "rice cooker", "travel mug", "laptop stand",
         "yoga mat", "air purifier", "camping tent", "bluetooth speaker", "wall clock",
         "garden hose")

# topic -> (aspect noun used in sentences, positive details, negative details)
TOPICS = {
    "build quality": ("build", ("feels sturdy and solid", "survived a few hard drops",
                                "has tight and clean seams", "uses thick metal parts"),
                      ("feels cheap and hollow", "cracked after one week",
                       "creaks when I press it", "has loose screws everywhere")),
    "price": ("price", ("costs less than the rivals", "is worth every penny",
                        "was cheap during the sale", "saves money in the long run"),
              ("costs far too much", "is twice the price of the rivals",
               "needs expensive spare parts", "was not worth the money")),
    "design": ("look", ("looks sleek and modern", "comes in lovely colors",
                        "has a clean and simple shape", "fits any room"),
               ("looks old and dated", "has an ugly logo on top",
                "scratches far too easily", "comes in dull colors")),
    "ease of use": ("setup", ("took two minutes to set up", "has clear and simple buttons",
                              "works right out of the box", "needs no manual at all"),
                    ("has a confusing menu", "needed a long manual",
                     "keeps losing its settings", "took an hour to set up")),
    "delivery": ("shipping", ("arrived two days early", "came well packed",
                              "was tracked the whole way", "arrived in one piece"),
                 ("arrived a week late", "came in a crushed box",
                  "was sent to the wrong town", "arrived with parts missing")),
    "customer service": ("support", ("has a seller who answered my email within an hour",
                                     "came with a free replacement part",
                                     "has a kind and patient help line",
                                     "has support that fixed my problem on the first call"),
                         ("has a seller who never answered my emails",
                          "has a help line that kept me on hold for an hour",
                          "has a seller who refused to send a new part",
                          "has rude support staff on the phone")),
    "durability": ("lifespan", ("still works after a full year", "handles daily use with ease",
                                "shows no wear at all", "outlasted my old one"),
                   ("broke after two months", "wore out far too fast",
                    "stopped working in the rain", "shows wear after a week")),
    "size": ("size", ("fits easily in my bag", "is light enough to carry all day",
                      "takes up very little space", "is just the right size"),
             ("is far too bulky", "is heavy to carry around",
              "takes up half my desk", "is smaller than the photos suggest")),
}

# word slot -> synonyms; each user picks one per slot (their habit) and sticks to it
SLOTS = {
    "good": ("great", "terrific", "fine", "solid", "excellent", "decent", "lovely", "superb"),
    "bad": ("poor", "awful", "weak", "lousy", "disappointing", "mediocre", "terrible", "bad"),
    "very": ("very", "really", "quite", "truly", "extremely", "pretty", "rather", "super"),
    "think": ("think", "feel", "believe", "reckon", "would say", "suppose"),
    "buy": ("buy", "get", "purchase", "pick up", "order", "grab"),
    "like": ("like", "love", "enjoy", "appreciate", "value", "adore"),
    "overall": ("overall", "all in all", "in short", "in the end", "on balance", "to sum up"),
    "also": ("also", "plus", "besides", "furthermore", "moreover", "on top of that"),
    "but": ("but", "however", "still", "that said", "then again", "even so"),
    "people": ("friends", "family", "anyone", "coworkers", "everyone", "beginners"),
    "thing": ("thing", "unit", "device", "product", "gadget", "item"),
}

OPENINGS = ("Honestly, here is my take.", "Quick review time!", "Dear reader, let me share my view.",
            "Okay, let me get into it.", "Here are my thoughts.", "Well, where do I start.",
            "Greetings, fellow shoppers.", "Short version first.", "Let me be blunt.",
            "So, I finally tried it.", "Good day to all.", "Fair warning, this is long.",
            "Time for another review.", "Hello again, everyone.", "Straight to the point.",
            "I have been waiting to write this.")
SIGNOFFS = ("Cheers!", "That is all.", "Kind regards.", "Happy shopping!", "Take care.",
            "Thanks for reading.", "Just my two cents.", "Over and out.", "Hope this helps.",
            "Best wishes.", "Enough said.", "Until next time!", "Stay tuned.", "Peace.",
            "You have been warned.", "End of review.")
TONES = {  # tone -> (probability of "!" per sentence, interjections)
    "enthusiastic": (0.6, ("wow,", "seriously,", "oh,", "man,")),
    "dry": (0.0, ("sure,", "fine,", "I guess")),
    "formal": (0.0, ("notably,", "indeed,", "it is worth noting that")),
    "casual": (0.15, ("so,", "well,", "anyway,", "yeah,")),
}
CONTRACTIONS = (("would not", "wouldn't"), ("I would", "I'd"), ("do not", "don't"),
                ("did not", "didn't"), ("it is", "it's"), ("I have", "I've"))
NUMBERS = ("one", "two", "three", "four", "five")
_HABIT_CONSISTENCY = 0.9  # how often a user uses their own synonym rather than a random one


@dataclass(frozen=True)
class UserStyle:
    """One synthetic user's fixed writing habits."""

    user_id: str
    words: dict  # slot -> the user's synonym
    opening: str
    signoff: str
    n_body: int  # typical number of body sentences (2-7)
    tone: str
    contractions: bool
    positivity: float  # probability that a review is positive
    pet_topic: str  # mentioned in every review, whatever the query
    rates: bool  # ends with "I give it N stars."
    recommends: bool  # says who they would recommend it to
    favorite_topics: tuple  # topics the user tends to be asked about


def make_user(index: int, seed: int = 0) -> UserStyle:
    """Draw user ``index``'s habits; stable for a given (index, seed).

    >>> make_user(3, seed=0) == make_user(3, seed=0)
    True
    """
    rng = random.Random(f"flythinker-synthetic-user:{seed}:{index}")
    return UserStyle(
        user_id=f"syn-u{index:03d}",
        words={slot: rng.choice(options) for slot, options in SLOTS.items()},
        opening=rng.choice(OPENINGS), signoff=rng.choice(SIGNOFFS),
        n_body=rng.randint(2, 7), tone=rng.choice(sorted(TONES)),
        contractions=rng.random() < 0.5, positivity=rng.choice((0.2, 0.5, 0.85)),
        pet_topic=rng.choice(sorted(TOPICS)), rates=rng.random() < 0.5,
        recommends=rng.random() < 0.5, favorite_topics=tuple(rng.sample(sorted(TOPICS), 2)),
    )


def make_query(item: str, topic: str) -> str:
    """The example's ``input``: what to write about, with nothing about how.

    >>> make_query("desk lamp", "price")
    'Write a review of the desk lamp about its price.'
    """
    return f"Write a review of the {item} about its {topic}."


def write_review(user: UserStyle, item: str, topic: str, rng: random.Random) -> str:
    """One review of ``item`` about ``topic`` in ``user``'s style (content from the query,
    style from the user; ``rng`` supplies the per-text noise).

    >>> text = write_review(make_user(0), "desk lamp", "price", random.Random(0))
    >>> "desk lamp" in text and text.endswith(make_user(0).signoff)
    True
    """
    if topic not in TOPICS:
        raise UserError(f"synthetic: unknown topic {topic!r}; choose from {sorted(TOPICS)}")

    def w(slot: str) -> str:  # the user's habitual word, with a little noise
        return user.words[slot] if rng.random() < _HABIT_CONSISTENCY else rng.choice(SLOTS[slot])

    positive = rng.random() < user.positivity
    aspect, pos_details, neg_details = TOPICS[topic]
    details = {True: list(pos_details), False: list(neg_details)}
    for d in details.values():
        rng.shuffle(d)

    def body_sentence(i: int) -> str:
        pol = positive if rng.random() < 0.8 else not positive
        judge = w("good") if pol else w("bad")
        detail = details[pol].pop() if details[pol] else None
        if i == 0:  # the first body sentence always states the query's item and topic
            return f"when it comes to {topic}, the {item} {detail or 'is ' + judge}"
        if detail is None:  # out of fresh details: a plain judgement
            return rng.choice((f"I {w('think')} the {aspect} is {w('very')} {judge}",
                               f"the {aspect} is {w('very')} {judge} for a {w('thing')} like this",
                               f"I found the {aspect} {judge}"))
        return rng.choice((
            f"this {w('thing')} {detail}",
            f"{w('also')}, it {detail}" if pol == positive else f"{w('but')}, it {detail}",
            f"my {item} {detail}, which I did not expect",
            f"in terms of {topic}, it {detail}",
            f"I {w('think')} the {aspect} is {w('very')} {judge}, since it {detail}",
        ))

    n = max(1, min(8, user.n_body + rng.randint(-1, 1)))
    sentences = [body_sentence(i) for i in range(n)]
    pet_aspect = TOPICS[user.pet_topic][0]
    pet = (f"as always, I checked the {pet_aspect} first, and it is {w('very')} "
           f"{w('good') if positive else w('bad')}")
    sentences.insert(rng.randint(1, len(sentences)), pet)
    sentences.append(f"{w('overall')}, the {item} is {w('very')} {w('good') if positive else w('bad')}")
    if user.recommends:
        sentences.append(f"I would {'' if positive else 'not '}recommend it to {w('people')}")
    if user.rates:
        stars = rng.choice((4, 5)) if positive else rng.choice((1, 2))
        sentences.append(f"I give it {NUMBERS[stars - 1]} star{'s' * (stars > 1)}")
    if not positive:
        sentences.append(f"I would not {w('buy')} it again")
    return " ".join([user.opening] + [_finish(s, user, rng) for s in sentences] + [user.signoff])


def _finish(sentence: str, user: UserStyle, rng: random.Random) -> str:
    """Apply the user's tone: interjections, contractions, end punctuation, capitalization."""
    p_exclaim, interjections = TONES[user.tone]
    if rng.random() < 0.25:
        sentence = f"{rng.choice(interjections)} {sentence}"
    if user.contractions:
        for full, short in CONTRACTIONS:
            sentence = re.sub(rf"\b{full}\b", short, sentence)
    end = "!" if rng.random() < p_exclaim else "."
    return sentence[0].upper() + sentence[1:] + end


def style_signature(text: str) -> dict:
    """Surface habits of one text, to check generated text against a profile.

    >>> style_signature("Hi there. It's fine! Cheers!")["signoff"]
    'Cheers!'
    """
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    return {
        "opening": sentences[0], "signoff": sentences[-1], "n_sentences": len(sentences),
        "n_words": len(text.split()),
        "exclaim_rate": sum(s.endswith("!") for s in sentences) / len(sentences),
        "contractions": "'" in text,
    }


def _user_history(user: UserStyle, n_texts: int, index: int, seed: int) -> list[dict]:
    """The user's reviews in time order: {id, title (the query), text, date}."""
    rng = random.Random(f"flythinker-synthetic-texts:{seed}:{index}")
    date = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(1500))
    history = []
    for j in range(n_texts):
        topic = rng.choice(user.favorite_topics) if rng.random() < 0.5 else rng.choice(sorted(TOPICS))
        item = rng.choice(ITEMS)
        date += dt.timedelta(days=rng.randint(3, 60))
        history.append({"id": f"{user.user_id}-t{j:03d}", "title": make_query(item, topic),
                        "text": write_review(user, item, topic, rng), "date": date.isoformat()})
    return history


def make_synthetic(n_users: int = 24, examples_per_user: int = 10, profile_size: int = 6,
                   seed: int = 0) -> dict[str, list[dict]]:
    """Build train/dev/test in LongLaMP format with a *user* split (dev/test users are unseen).

    Each user writes ``profile_size + examples_per_user`` reviews in time order; example k's
    output is review ``profile_size + k`` and its profile is the ``profile_size`` reviews just
    before it (strictly earlier, as in LongLaMP). One sixth of the users (at least one) go to
    dev and one sixth to test: 16/4/4 for the default 24 users.

    >>> data = make_synthetic(n_users=6, examples_per_user=2, profile_size=3)
    >>> [len(data[s]) for s in ("train", "dev", "test")], len(data["dev"][0]["profile"])
    ([8, 2, 2], 3)
    """
    if n_users < 3:
        raise UserError(f"synthetic: n_users={n_users}; need at least 3 (train, dev and test users)")
    if examples_per_user < 1 or profile_size < 1:
        raise UserError(f"synthetic: examples_per_user={examples_per_user} and "
                        f"profile_size={profile_size} must both be >= 1")
    n_held = max(1, round(n_users / 6))
    split_of = ["train"] * (n_users - 2 * n_held) + ["dev"] * n_held + ["test"] * n_held
    data: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for u in range(n_users):
        user = make_user(u, seed)
        history = _user_history(user, profile_size + examples_per_user, u, seed)
        for k in range(examples_per_user):
            target = history[profile_size + k]
            data[split_of[u]].append({
                "id": f"{user.user_id}-e{k:03d}", "user_id": user.user_id,
                "input": target["title"], "output": target["text"],
                "profile": history[k:profile_size + k], "date": target["date"],
            })
    return data


def write_synthetic(out_dir: str | Path, **kw) -> Path:
    """Write ``make_synthetic(**kw)`` as ``train.json``/``dev.json``/``test.json`` (each written
    to a temporary file and renamed, so a reader never sees half a file); returns the folder.

    >>> path = write_synthetic("/tmp/flythinker-synthetic", n_users=6)  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in make_synthetic(**kw).items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{split}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(rows, f, ensure_ascii=False, indent=1)
            os.replace(tmp, out / f"{split}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out
