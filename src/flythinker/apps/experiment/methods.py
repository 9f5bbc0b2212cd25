"""The methods of the comparison (docs/design.md#the-methods-of-the-comparison), selectable by name, and the pieces they need.

===================== =========== ============================================================
name                  model       what differs from FlyThinker
===================== =========== ============================================================
``nonpers``           G alone     query only, no profile in the prompt (retrieval ``none``)
``rag``               G alone     top-k profile items by BM25 in the prompt
``sft``               G alone     the same prompt as FlyThinker (profile + query): main baseline
``think_then_generate`` G alone   emits ``<think>…</think>`` then the response; only the
                                  response is scored (:func:`strip_think`)
``static``            G + R       latent think-then-generate: one latent from the prompt, the
                                  same vector added at every response position
``flythinker``        G + R       one latent per token (the method)
===================== =========== ============================================================

``static`` is :class:`flythinker.static.StaticThinker`, the "static reasoning" ablation of the
paper and the latent (Coconut-like) form of think-then-generate: R reads only the prompt and its
last latent z_P goes through the same fusion into G's input at every response position.

``think_then_generate`` needs reasoning text. LongLaMP and gitcommits carry none and no teacher
LLM is available here, so :func:`profile_teacher` is a documented, deterministic *stand-in*
teacher: it writes a short plan from the profile alone (opening words, length, recurring
phrases), never from the target. Data that has ``Example.reasoning`` uses that instead.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, replace

from flythinker.errors import UserError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Baseline:
    """One method of the comparison: which model is trained and how its prompts are built."""

    name: str
    model: str
    """"sft" (G alone), "flythinker" (G + R, a latent per token) or "static" (G + R, one latent)."""
    retrieval: str | None
    """PromptConfig.retrieval for this method; None keeps the experiment's setting."""
    think: bool = False
    """Train on ``<think>reasoning</think>`` + response and strip the think block before scoring."""
    description: str = ""


BASELINES = {
    b.name: b
    for b in (
        Baseline("nonpers", "sft", "none", description="query only (no profile), fine-tuned G"),
        Baseline("rag", "sft", "bm25", description="top-k profile items by BM25, fine-tuned G"),
        Baseline("sft", "sft", None, description="G fine-tuned on profile + query -> response"),
        Baseline(
            "think_then_generate",
            "sft",
            None,
            think=True,
            description="explicit <think> plan (stand-in profile teacher) then the response",
        ),
        Baseline("static", "static", None, description="one prompt latent from R added at every response position"),
        Baseline("flythinker", "flythinker", None, description="R's latent of every token fused into G's next input"),
    )
}


def get_baseline(name: str) -> Baseline:
    """The registry entry of a method name.

    >>> get_baseline("rag").retrieval
    'bm25'
    """
    if name not in BASELINES:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]


# --- explicit think-then-generate ---------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z'_-]*")
_STOP = frozenset(
    "the a an of to in and or is are be it this that for on with as by we at from not "
    "but if so can when which was has have there its into than then also".split()
)


def profile_teacher(example) -> str:
    """A deterministic stand-in for a teacher LLM's reasoning, written from the profile only.

    Notes the author's usual opening words, typical length and paragraphs, and phrases that
    recur across their earlier texts. It never reads ``example.output``.

    >>> from flythinker.data.longlamp import Example
    >>> ex = Example("e", "u", "q", "secret", [{"title": "t", "text": "This patch adds x.\\n\\nIt also fixes y."},
    ...              {"title": "t2", "text": "This patch adds z. It also fixes w."}], "generic")
    >>> print(profile_teacher(ex))
    Opening: "This patch". Length: about 8 words, 2 paragraphs. Recurring: "also fixes", "patch adds", "this patch".
    """
    from flythinker.data.longlamp import item_fields

    texts = [item_fields(item, example.task)[-1][1] for item in example.profile if item_fields(item, example.task)]
    if not texts:
        return "No earlier texts: write a plain, neutral response."
    openings = Counter(" ".join(t.split()[:2]) for t in texts)
    opening = sorted(openings.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    words = int(statistics.median(len(t.split()) for t in texts))
    paragraphs = round(statistics.median(len([p for p in t.split("\n\n") if p.strip()]) for t in texts))
    grams: Counter = Counter()
    for t in texts:
        toks = [w.lower() for w in _WORD.findall(t)]
        grams.update({(a, b) for a, b in zip(toks, toks[1:]) if not (a in _STOP and b in _STOP)})
    common = [" ".join(g) for g, n in sorted(grams.items(), key=lambda kv: (-kv[1], kv[0])) if n >= 2][:3]
    out = f'Opening: "{opening}". Length: about {words} words, {paragraphs} paragraphs.'
    return out + (" Recurring: " + ", ".join(f'"{c}"' for c in common) + "." if common else "")


def with_reasoning(example, teacher=profile_teacher):
    """A copy of ``example`` whose target is ``<think>\\nreasoning\\n</think>\\n`` + the response;
    the reasoning is ``example.reasoning`` when the data has it, else ``teacher(example)``.

    >>> with_reasoning(ex).output.startswith("<think>")  # doctest: +SKIP
    True
    """
    reasoning = example.reasoning if example.reasoning else teacher(example)
    return replace(
        example, output=f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n{example.output}", reasoning=reasoning
    )


def strip_think(text: str) -> str:
    """The response part of a generation: everything after the first ``</think>``.

    An opened but unclosed think block means the response never started: "" is scored.
    Text without a think block is returned unchanged.

    >>> strip_think("<think>\\nplan\\n</think>\\nThe body.")
    'The body.'
    >>> strip_think("<think> never closed"), strip_think("no block")
    ('', 'no block')
    """
    head, sep, tail = text.partition(THINK_CLOSE)
    if sep:
        return tail.strip()
    return "" if THINK_OPEN in text else text
