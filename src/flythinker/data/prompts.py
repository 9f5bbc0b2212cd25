"""Prompts for personalized generation: profile + query -> prompt, within the paper's budgets.

The paper keeps the profile under 1250 tokens, the query under 300 and the target under
1000, cutting at sentence boundaries. Rules here (counted with the model's own tokenizer):

* a text within its budget is never cut — the official code drops every target's last
  sentence even when it fits; here a target that fits is kept whole;
* a target or profile item over budget keeps its leading whole sentences that fit; a query
  keeps its leading sentences *and* its last one (LongLaMP queries end with the details of
  what to write, e.g. the review's summary);
* a field is never left empty: when even one sentence is over budget, it is cut at a token
  boundary;
* the profile keeps whole items, the most useful first (best BM25 score, else most recent),
  skipping those that no longer fit; only when no item fits whole is the best one cut.

The prompt uses the tokenizer's chat template when it has one (system + user message, then
the generation prompt), else a plain ``### Profile / ### Query / ### Response`` layout. In
training the response is tokenized apart from the prompt and appended, so the prompt's ids
are exactly what generation starts from, and the labels are the response ids plus EOS.

    >>> cfg = PromptConfig(retrieval="bm25", k=2)
    >>> prompt = build_prompt(example, tokenizer, cfg)                          # doctest: +SKIP
    >>> feats = [encode_for_training(e, tokenizer, cfg) for e in examples]      # doctest: +SKIP
    >>> batch = collate(feats, pad_token_id=tokenizer.pad_token_id)             # doctest: +SKIP
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from flythinker.data.collate import IGNORE_INDEX
from flythinker.data.collate import TEACHER_FORCED_PADDING as TEACHER_FORCED_PADDING  # re-exported
from flythinker.data.collate import collate as collate  # re-exported: the public API
from flythinker.data.longlamp import Example, render_profile_item
from flythinker.data.retrieval import bm25_rank, chronological_order, recent_rank, retrieval_query
from flythinker.errors import UserError

RETRIEVALS = ("none", "all", "bm25", "recent")
PROFILE_IN = ("both", "reasoner")
LAYOUTS = ("flythinker", "official")
ORDERS = ("oldest", "score")
SYSTEM_WITH_PROFILE = (
    "You write personalized long-form text. The profile holds earlier texts by "
    "this user; write the response the way this user writes."
)
SYSTEM_NO_PROFILE = "You write long-form text. Write the response to the query."
# Punkt without a trained model splits after every period; these keep common abbreviations whole
_ABBREVIATIONS = set("e.g i.e etc vs cf al approx dr mr mrs ms prof fig eq no vol resp inc ltd jr sr st".split())


@dataclass
class PromptConfig:
    """How a prompt is built from an :class:`Example` (paper defaults).

    >>> PromptConfig(retrieval="bm25", k=2).k
    2
    """

    profile_tokens: int = 1250
    """Token budget of the rendered profile block."""
    query_tokens: int = 300
    """Token budget of the query (the example's input)."""
    target_tokens: int = 1000
    """Token budget of the training target (before EOS)."""
    retrieval: str = "all"
    """Profile items in the prompt: "none" (query only), "all", "bm25" (top k) or "recent" (newest k)."""
    k: int = 4
    """Number of items kept by "bm25" and "recent"."""
    order: str = "oldest"
    """Order of items in the prompt: "oldest" (oldest to newest) or "score" (best first)."""
    use_chat_template: bool | None = None
    """Wrap the prompt in the tokenizer's chat template; None: when the tokenizer has one."""
    profile_in: str = "both"
    """Whose prompt holds the profile: "both" (the paper) or "reasoner" (R reads profile + query, G
    the query alone; the response is shared; :class:`flythinker.separate.SeparatePromptThinker`)."""
    layout: str = "flythinker"
    """How the prompt is worded: "flythinker" (our system message and ``### Profile`` / ``### Query``
    headings) or "official" (the authors' released code: one user message, the profile block and the
    query joined with nothing between them, under the chat template's own default system prompt)."""

    def __post_init__(self):
        for name in ("profile_tokens", "query_tokens", "target_tokens", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"PromptConfig.{name} must be an integer >= 1, got {value!r}")
        if self.retrieval not in RETRIEVALS:
            raise UserError(f"PromptConfig.retrieval must be one of {', '.join(RETRIEVALS)}, got {self.retrieval!r}")
        if self.profile_in not in PROFILE_IN:
            raise UserError(f"PromptConfig.profile_in must be one of {', '.join(PROFILE_IN)}, got {self.profile_in!r}")
        if self.layout not in LAYOUTS:
            raise UserError(f"PromptConfig.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.order not in ORDERS:
            raise UserError(f"PromptConfig.order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.use_chat_template not in (None, True, False):
            raise UserError(
                f"PromptConfig.use_chat_template must be true, false or null, got {self.use_chat_template!r}"
            )


@dataclass
class PromptParts:
    """The three texts of one example after retrieval and truncation."""

    profile: str  # rendered profile block, "" when no item is used
    query: str
    target: str


# --- counting and cutting -------------------------------------------------------------


def n_tokens(text: str, tokenizer) -> int:
    """Number of tokens of ``text`` without special tokens."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@functools.cache
def _punkt():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(_ABBREVIATIONS)
    return PunktSentenceTokenizer(params)  # rule-based: needs no downloaded model


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the sentences of ``text``; a blank line also ends one.

    >>> text = "It works. See e.g. the docs!\\n\\nA list item"
    >>> [text[a:b] for a, b in sentence_spans(text)]
    ['It works.', 'See e.g. the docs!', 'A list item']
    """
    spans, start = [], 0
    for brk in [*re.finditer(r"\n[ \t]*\n\s*", text), None]:
        end = brk.start() if brk else len(text)
        spans += [(start + a, start + b) for a, b in _punkt().span_tokenize(text[start:end])]
        start = brk.end() if brk else end
    return spans


def _longest_fit(n: int, make, max_tokens: int, tokenizer) -> str | None:
    """``make(j)`` for the largest j in 1..n that fits (token counts grow with j)."""
    lo, hi, best = 1, n, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = make(mid)
        if n_tokens(candidate, tokenizer) <= max_tokens:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def _cut_tokens(text: str, max_tokens: int, tokenizer) -> str:
    """The first ``max_tokens`` tokens of ``text``, as text (original characters kept)."""
    if getattr(tokenizer, "is_fast", False):  # offsets keep the original characters
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        cut = text[: enc["offset_mapping"][max_tokens - 1][1]]
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cut = tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)
    while len(cut) > 1 and n_tokens(cut, tokenizer) > max_tokens:  # re-tokenizing may merge
        cut = cut[:-1]
    return cut.rstrip() or cut


def truncate_text(text: str, max_tokens: int, tokenizer, keep_last: bool = False) -> str:
    """``text`` cut to ``max_tokens`` tokens at sentence boundaries (see the module doc).

    A text that fits is returned unchanged. Otherwise the leading sentences that fit are
    kept; with ``keep_last`` the last sentence is kept too (middle sentences are dropped).
    A first sentence over budget is cut at a token boundary, so the result is never empty.
    """
    if max_tokens < 1:
        raise UserError(f"token budget must be >= 1, got {max_tokens}")
    if n_tokens(text, tokenizer) <= max_tokens:
        return text
    spans = sentence_spans(text)
    if keep_last and len(spans) > 1:
        (start, end), gap = spans[-1], text[spans[-2][1] : spans[-1][0]]
        last = text[start:end]

        def head_and_last(j):  # j - 1 leading sentences, then the last one
            return last if j == 1 else text[: spans[j - 2][1]] + gap + last

        kept = _longest_fit(len(spans), head_and_last, max_tokens, tokenizer)
        if kept is not None:
            return kept
    kept = _longest_fit(len(spans), lambda j: text[: spans[j - 1][1]], max_tokens, tokenizer)
    return kept if kept is not None else _cut_tokens(text, max_tokens, tokenizer)


# --- profile selection ----------------------------------------------------------------


def _ranked(example: Example, cfg: PromptConfig) -> list[int]:
    """Profile indices the config selects, most useful first."""
    if cfg.retrieval == "none" or not example.profile:
        return []
    if cfg.retrieval == "bm25":
        return bm25_rank(example.profile, retrieval_query(example), example.task, cfg.k)
    return recent_rank(example.profile, cfg.k if cfg.retrieval == "recent" else None)


def _in_display_order(example: Example, indices, cfg: PromptConfig) -> list[int]:
    if cfg.order == "score":
        return list(indices)
    position = {i: r for r, i in enumerate(chronological_order(example.profile))}
    return sorted(indices, key=position.__getitem__)


def select_profile(example: Example, cfg: PromptConfig) -> list[dict]:
    """The profile items the config selects (before the token budget), in prompt order.

    >>> [it["title"] for it in select_profile(example, PromptConfig(retrieval="recent", k=2))]  # doctest: +SKIP
    ['second newest', 'newest']
    """
    return [example.profile[i] for i in _in_display_order(example, _ranked(example, cfg), cfg)]


def _profile_block(example: Example, texts: dict[int, str], cfg: PromptConfig) -> str:
    order = _in_display_order(example, texts, cfg)
    return "\n\n".join(f"[{n}] {texts[i]}" for n, i in enumerate(order, 1))


def fit_profile(example: Example, tokenizer, cfg: PromptConfig) -> str:
    """The rendered profile block: selected items, numbered, within ``cfg.profile_tokens``."""
    ranked, budget = _ranked(example, cfg), cfg.profile_tokens
    if not ranked:
        return ""
    rendered = {i: render_profile_item(example.profile[i], example.task) for i in ranked}
    # item costs add up (plus "[n] " and the blank line between items); the joined block is
    # counted at the end, since tokens may merge across the joins
    sep = n_tokens("\n\n", tokenizer)
    overhead = n_tokens(f"[{len(ranked)}] ", tokenizer) + sep
    kept: dict[int, str] = {}
    used = -sep  # the first item has no blank line before it
    for i in ranked:  # most useful first; an item that no longer fits is skipped
        cost = n_tokens(rendered[i], tokenizer) + overhead
        if used + cost <= budget:
            kept[i], used = rendered[i], used + cost
    while kept:
        block = _profile_block(example, kept, cfg)
        if n_tokens(block, tokenizer) <= budget:
            return block
        kept.pop(next(reversed(kept)))  # over after all: drop the least useful one
    # no item fits whole: cut the best one, shrinking until its numbered block fits
    best, room = ranked[0], budget
    while room >= 1:
        block = _profile_block(example, {best: truncate_text(rendered[best], room, tokenizer)}, cfg)
        excess = n_tokens(block, tokenizer) - budget
        if excess <= 0:
            return block
        room -= excess
    return truncate_text(rendered[best], budget, tokenizer)  # budget below the "[1] " prefix


# --- prompts and features -------------------------------------------------------------


def prompt_parts(example: Example, tokenizer, cfg: PromptConfig) -> PromptParts:
    """Profile block, query and target of ``example``, each within its token budget."""
    return PromptParts(
        profile=fit_profile(example, tokenizer, cfg),
        query=truncate_text(example.input, cfg.query_tokens, tokenizer, keep_last=True),
        target=truncate_text(example.output, cfg.target_tokens, tokenizer),
    )


def _uses_chat_template(tokenizer, cfg: PromptConfig) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if cfg.use_chat_template and not has_template:
        raise UserError("use_chat_template is true but the tokenizer has no chat template")
    return has_template if cfg.use_chat_template is None else cfg.use_chat_template


def _format(parts: PromptParts, tokenizer, chat: bool, layout: str = "flythinker") -> str:
    if layout == "official":  # the released code: user message = profile + query, no system message of ours
        user = parts.profile + parts.query
        if not chat:
            return f"{user}\n\n"
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    system = SYSTEM_WITH_PROFILE if parts.profile else SYSTEM_NO_PROFILE
    user = (f"### Profile\n{parts.profile}\n\n" if parts.profile else "") + f"### Query\n{parts.query}"
    if not chat:
        return f"{system}\n\n{user}\n\n### Response\n"
    from jinja2 import TemplateError

    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:  # some templates (e.g. Gemma's) refuse a system turn
        messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _prompt_ids(prompt: str, tokenizer, chat: bool) -> list[int]:
    # a chat template writes its own BOS text; the plain layout lets the tokenizer add it
    return list(tokenizer(prompt, add_special_tokens=not chat)["input_ids"])


def build_prompt(example: Example, tokenizer, cfg: PromptConfig) -> str:
    """G's prompt text (chat template applied when used); the response follows it.

    >>> print(build_prompt(example, tokenizer, PromptConfig(retrieval="none")))  # doctest: +SKIP
    You write long-form text. Write the response to the query.
    <BLANKLINE>
    ### Query
    Write the body of the commit message ...
    <BLANKLINE>
    ### Response
    <BLANKLINE>
    """
    parts = prompt_parts(example, tokenizer, cfg)
    if cfg.profile_in == "reasoner":  # G's prompt: the query alone
        parts = PromptParts("", parts.query, parts.target)
    return _format(parts, tokenizer, _uses_chat_template(tokenizer, cfg), cfg.layout)


def _prompts(example: Example, tokenizer, cfg: PromptConfig) -> tuple[list[int], list[int] | None, PromptParts]:
    """(G's prompt ids, R's prompt ids or None when R reads G's, the parts)."""
    chat = _uses_chat_template(tokenizer, cfg)
    parts = prompt_parts(example, tokenizer, cfg)
    layout = cfg.layout
    if cfg.profile_in == "both":
        return _prompt_ids(_format(parts, tokenizer, chat, layout), tokenizer, chat), None, parts
    query_only = PromptParts("", parts.query, parts.target)
    generator = _prompt_ids(_format(query_only, tokenizer, chat, layout), tokenizer, chat)
    return generator, _prompt_ids(_format(parts, tokenizer, chat, layout), tokenizer, chat), parts


def encode_for_generation(example: Example, tokenizer, cfg: PromptConfig) -> list[int]:
    """The prompt's token ids, the prefix that generation continues (G's prompt: the query alone
    when ``cfg.profile_in`` is ``"reasoner"``).

    >>> ids = encode_for_generation(example, tokenizer, PromptConfig())  # doctest: +SKIP
    """
    return _prompts(example, tokenizer, cfg)[0]


def encode_reasoner_prompt(example: Example, tokenizer, cfg: PromptConfig) -> list[int] | None:
    """R's own prompt ids (profile + query) when ``cfg.profile_in`` is ``"reasoner"``, else None
    (R reads G's prompt).

    >>> encode_reasoner_prompt(example, tokenizer, PromptConfig())  # R reads G's tokens  # doctest: +SKIP
    """
    return _prompts(example, tokenizer, cfg)[1]


def generation_batch(examples: list[Example], tokenizer, cfg: PromptConfig, pad_token_id: int) -> dict:
    """Left-padded prompts of ``examples`` for decoding: G's ``input_ids`` / ``attention_mask`` and,
    with ``cfg.profile_in`` ``"reasoner"``, R's own ``reasoner_input_ids`` / ``reasoner_attention_mask``.

    >>> enc = generation_batch(examples, tokenizer, PromptConfig(), tokenizer.pad_token_id)  # doctest: +SKIP
    """
    feats = []
    for example in examples:
        generator, reasoner, _ = _prompts(example, tokenizer, cfg)
        feats.append({"input_ids": generator, **({} if reasoner is None else {"reasoner_input_ids": reasoner})})
    return collate(feats, pad_token_id, padding_side="left")


def encode_for_training(example: Example, tokenizer, cfg: PromptConfig) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}``: prompt ids + target ids + EOS; labels are -100 on the prompt.

    The prompt ids equal :func:`encode_for_generation`'s, so training sees exactly the
    tokens that generation would produce after the prompt. With ``cfg.profile_in`` ``"reasoner"``
    it also has ``"reasoner_input_ids"``: R's prompt (:func:`encode_reasoner_prompt`) + the same
    target ids + EOS.

    >>> f = encode_for_training(example, tokenizer, PromptConfig())     # doctest: +SKIP
    >>> f["input_ids"][-1] == tokenizer.eos_token_id                    # doctest: +SKIP
    True
    """
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos token; set tokenizer.eos_token before training")
    prompt_ids, reasoner_ids, parts = _prompts(example, tokenizer, cfg)
    target_ids = list(tokenizer(parts.target, add_special_tokens=False)["input_ids"])
    target_ids.append(tokenizer.eos_token_id)
    out = {"input_ids": prompt_ids + target_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids}
    return out if reasoner_ids is None else {**out, "reasoner_input_ids": reasoner_ids + target_ids}
