"""The paper's baselines (DESIGN.md §6), selectable by name, and the pieces they need.

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

``static`` (:class:`StaticThinker`) is the "static reasoning" ablation of the paper and the
latent (Coconut-like) form of think-then-generate: R reads only the prompt; its latent at the
last prompt token, z_P, goes through the same fusion (λ·ρ norm matching) into G's input at
every position from the last prompt token on — the positions that predict response tokens.

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

import torch

from flythinker.decoding.steps import GeneratorRunner, ReasonerRunner, RowState
from flythinker.errors import UserError
from flythinker.model import FlyThinker

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


BASELINES = {b.name: b for b in (
    Baseline("nonpers", "sft", "none", description="query only (no profile), fine-tuned G"),
    Baseline("rag", "sft", "bm25", description="top-k profile items by BM25, fine-tuned G"),
    Baseline("sft", "sft", None, description="G fine-tuned on profile + query -> response"),
    Baseline("think_then_generate", "sft", None, think=True,
             description="explicit <think> plan (stand-in profile teacher) then the response"),
    Baseline("static", "static", None, description="one prompt latent from R added at every response position"),
    Baseline("flythinker", "flythinker", None, description="R's latent of every token fused into G's next input"),
)}


def get_baseline(name: str) -> Baseline:
    """The registry entry of a method name.

    >>> get_baseline("rag").retrieval
    'bm25'
    """
    if name not in BASELINES:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]


# --- static reasoning: one latent from the prompt ---------------------------------------------


def last_prompt_index(attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                      prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:  # (B,)
    """Column of each row's last prompt token in a left-padded batch.

    From ``prompt_lengths`` (real prompt tokens per row), else from ``labels`` (the token before
    the first non-masked label), else the whole row is prompt (generation's prefill).

    >>> last_prompt_index(torch.tensor([[0, 1, 1, 1]]), labels=torch.tensor([[-100, -100, -100, 7]])).tolist()
    [2]
    """
    B, T = attention_mask.shape
    if prompt_lengths is not None:
        start = T - attention_mask.long().sum(1)  # first real column
        return start + prompt_lengths.to(start.device).long() - 1
    if labels is not None:
        has = labels != -100
        first = torch.where(has.any(1), has.long().argmax(1), torch.full((B,), T, device=labels.device))
        return first - 1
    return torch.full((B,), T - 1, dtype=torch.long, device=attention_mask.device)


class StaticThinker(FlyThinker):
    """Static reasoning: R's latent at the last prompt token, added at every response position.

    Same fusion, ρ and save format as :class:`FlyThinker` (``flythinker.json`` records
    ``"variant": "static"``, so :meth:`FlyThinker.from_pretrained` gives this class back).

    >>> model = StaticThinker(generator=g, reasoner=r, lam=0.5)                      # doctest: +SKIP
    >>> model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()     # doctest: +SKIP
    >>> model.generate(prompt_ids, attention_mask=prompt_mask, max_new_tokens=32)    # doctest: +SKIP
    """

    variant = "static"

    def fusion_config(self) -> dict:
        return {**super().fusion_config(), "variant": self.variant}

    def static_latent(self, latents: torch.Tensor, last: torch.Tensor) -> torch.Tensor:  # (B, T, d_R) -> (B, d_R)
        return latents[torch.arange(latents.shape[0], device=latents.device), last.to(latents.device)]

    def place_latents(self, embeds, latents, attention_mask, labels=None, prompt_lengths=None) -> torch.Tensor:
        # R runs causally over everything, but only z at the last prompt token is used:
        # exactly R(prompt), since nothing after it can reach that position
        last = last_prompt_index(attention_mask, labels, prompt_lengths)  # (B,)
        z = self.static_latent(latents, last)  # (B, d_R)
        cols = torch.arange(embeds.shape[1], device=attention_mask.device)
        where = (cols[None] >= last[:, None].to(cols.device)) & attention_mask.bool()  # (B, T)
        z_all = z[:, None].expand(-1, embeds.shape[1], -1).to(embeds.device)  # (B, T, d_R)
        return self.fusion(embeds, z_all, self.rho(), where.long().to(embeds.device))

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 64, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 eos_token_id=None, pad_token_id=None, streamer=None, mode: str = "sequential",
                 backend: str | None = None) -> torch.Tensor:  # (B, T_new)
        """Like :meth:`FlyThinker.generate`; ``mode``/``backend`` are accepted and ignored (R runs
        once, on the prompt, so there is nothing to overlap)."""
        from flythinker.decoding.sampling import SamplingConfig

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
        sampling = SamplingConfig(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        eos, pad = self._special_ids(eos_token_id, pad_token_id)
        return generate_static(self, input_ids, attention_mask, max_new_tokens, sampling, eos, pad, streamer)


@torch.no_grad()
def generate_static(model, input_ids, attention_mask, max_new_tokens: int, sampling, eos_token_id: list[int],
                    pad_token_id: int, streamer=None) -> torch.Tensor:  # (B, T_new)
    """Static decoder: R prefills the prompt once; G then gets the same latent at every step."""
    from flythinker.decoding.sampling import TokenSampler

    rows = RowState(input_ids, attention_mask, eos_token_id, pad_token_id, streamer)
    generator = GeneratorRunner(model)
    sampler = TokenSampler(sampling, device=generator.device)
    B, T = input_ids.shape
    if model.lam != 0.0:
        z = ReasonerRunner(model).prefill(input_ids, rows.attention_mask, rows.position_ids)[:, -1:]  # (B, 1, d_R)
    else:
        z = torch.zeros(B, 1, 1)
    # prefill: the latent applies at the last prompt column only (left padding: every row's last)
    where = torch.zeros(B, T, dtype=torch.long)
    where[:, -1] = 1
    logits = static_prefill(generator, input_ids, rows.attention_mask, rows.position_ids, z, where)
    for step in range(max_new_tokens):
        tokens = rows.push(sampler(logits, rows.sequences.to(logits.device)).to(input_ids.device))
        if rows.all_finished or step == max_new_tokens - 1:
            break
        logits = generator.step(tokens, z, rows.attention_mask, rows.last_position())
    return rows.result()


def static_prefill(runner: GeneratorRunner, input_ids, attention_mask, position_ids, z, where) -> torch.Tensor:
    """G's prefill with the static latent z (B, 1, d_R) at the columns ``where`` (B, T) → logits (B, V)."""
    from flythinker.decoding.steps import cache_of

    dev = runner.device
    latents = z.to(dev).expand(-1, input_ids.shape[1], -1)  # (B, T, d_R)
    out = runner.net(inputs_embeds=runner._fuse(input_ids.to(dev), latents, where.to(dev)),
                     attention_mask=attention_mask.to(dev), position_ids=position_ids.to(dev),
                     use_cache=True, logits_to_keep=1)
    runner.cache = cache_of(out)
    return out.logits[:, -1]


# --- explicit think-then-generate ---------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z'_-]*")
_STOP = frozenset("the a an of to in and or is are be it this that for on with as by we at from not "
                  "but if so can when which was has have there its into than then also".split())


def profile_teacher(example) -> str:
    """A deterministic stand-in for a teacher LLM's reasoning, written from the profile only.

    Notes the author's usual opening words, typical length and paragraphs, and phrases that
    recur across their earlier texts. It never reads ``example.output``.

    >>> from flythinker.data.longlamp import Example
    >>> ex = Example("e", "u", "q", "secret", [{"title": "t", "text": "This patch adds x.\\n\\nIt also fixes y."},
    ...              {"title": "t2", "text": "This patch adds z. It also fixes w."}], "generic")
    >>> print(profile_teacher(ex))
    Opening: "This patch". Length: about 7 words, 2 paragraphs. Recurring: "this patch", "patch adds", "also fixes".
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
    return replace(example, output=f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n{example.output}",
                   reasoning=reasoning)


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
