"""Prompts: truncation, budgets, retrieval, chat templates, training labels and collation."""

from __future__ import annotations

from pathlib import Path

import pytest

from flythinker.data.longlamp import Example, load_examples, render_profile_item
from flythinker.data.prompts import (
    IGNORE_INDEX,
    SYSTEM_WITH_PROFILE,
    PromptConfig,
    build_prompt,
    collate,
    encode_for_generation,
    encode_for_training,
    encode_reasoner_prompt,
    generation_batch,
    n_tokens,
    prompt_parts,
    select_profile,
    sentence_spans,
    truncate_text,
)
from flythinker.errors import UserError

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gitcommits" / "sample"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "The cat sleeps on the warm mat all day long.",
    "My garden grows tomatoes, beans and a few stubborn carrots.",
    "The stock market fell sharply after the bank raised interest rates.",
    "This kettle boils water quickly and the handle stays cool.",
    "Write a review of the product. The summary of the review is short.",
]


def make_tokenizer(chat_template: str | None = None):
    """A byte-level BPE (any text encodes, decode is lossless) with <pad> and <eos>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def chat_tok():
    return make_tokenizer(CHAT_TEMPLATE)


def example(
    output="First sentence here. Second one follows. The last sentence ends it.",
    profile=None,
    input="Write a short text about the garden.",
    task="generic",
):
    if profile is None:
        profile = [{"title": f"Note {i}", "text": CORPUS[i], "date": f"2020-01-0{i + 1}"} for i in range(4)]
    return Example(id="x", user_id="u", input=input, output=output, profile=profile, task=task)


# --- truncation -----------------------------------------------------------------------


def test_sentence_spans_keep_abbreviations_and_split_blank_lines():
    text = "It works. See e.g. the docs!\n\nA list item\nwith two lines"
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "It works.",
        "See e.g. the docs!",
        "A list item\nwith two lines",
    ]


def test_target_within_budget_is_kept_whole_with_its_last_sentence(tok):
    ex = example()
    budget = n_tokens(ex.output, tok)  # exactly fits: the official code would drop "The last ..."
    cfg = PromptConfig(target_tokens=budget)
    assert prompt_parts(ex, tok, cfg).target == ex.output
    feats = encode_for_training(ex, tok, cfg)
    response = [t for t, lab in zip(feats["input_ids"], feats["labels"]) if lab != IGNORE_INDEX]
    assert response[-1] == tok.eos_token_id
    assert tok.decode(response[:-1]) == ex.output
    assert tok.decode(response[:-1]).endswith("The last sentence ends it.")


def test_target_over_budget_keeps_leading_whole_sentences(tok):
    ex = example()
    two = "First sentence here. Second one follows."
    cut = truncate_text(ex.output, n_tokens(ex.output, tok) - 1, tok)
    assert cut == two
    assert truncate_text(ex.output, n_tokens(two, tok), tok) == two


@pytest.mark.parametrize("budget", [1, 3, 7])
def test_one_sentence_over_budget_is_cut_at_a_token_boundary_never_empty(tok, budget):
    text = "the cat sleeps on the warm mat and the garden grows beans " * 4
    cut = truncate_text(text.strip(), budget, tok)
    assert cut and text.startswith(cut)
    assert 1 <= n_tokens(cut, tok) <= budget


def test_query_keeps_first_and_last_sentence(tok):
    middle = " ".join(f"Filler sentence number {i} about the kettle." for i in range(10))
    query = f"Write a review of the product. {middle} The summary of the review is short."
    budget = n_tokens("Write a review of the product. The summary of the review is short.", tok) + 2
    cut = truncate_text(query, budget, tok, keep_last=True)
    assert cut.startswith("Write a review of the product.")
    assert cut.endswith("The summary of the review is short.")
    assert n_tokens(cut, tok) <= budget < n_tokens(query, tok)


@pytest.mark.parametrize("retrieval", ["all", "bm25", "recent"])
def test_budgets_respected_and_fields_never_empty_on_gitcommits(tok, retrieval):
    examples = load_examples(SAMPLE / "user_based" / "dev.json", limit=8)
    cfg = PromptConfig(profile_tokens=150, query_tokens=20, target_tokens=40, retrieval=retrieval, k=3)
    for ex in examples:
        parts = prompt_parts(ex, tok, cfg)
        assert 0 < n_tokens(parts.profile, tok) <= cfg.profile_tokens
        assert 0 < n_tokens(parts.query, tok) <= cfg.query_tokens
        assert 0 < n_tokens(parts.target, tok) <= cfg.target_tokens
        assert ex.output.startswith(parts.target)
        tiny = Example(ex.id, None, "q", "o", [{"text": "p"}], ex.task)  # 3 one-token fields
        overhead = n_tokens(build_prompt(tiny, tok, cfg), tok) - 2
        feats = encode_for_training(ex, tok, cfg)
        assert len(feats["input_ids"]) <= overhead + 150 + 20 + 40 + 1  # + eos


def test_profile_keeps_whole_items_newest_first_then_shows_them_oldest_first(tok):
    ex = example()
    items = [render_profile_item(it, "generic") for it in ex.profile]
    two_newest = f"[1] {items[2]}\n\n[2] {items[3]}"
    cfg = PromptConfig(profile_tokens=n_tokens(two_newest, tok) + 1)
    assert prompt_parts(ex, tok, cfg).profile == two_newest
    score_order = prompt_parts(ex, tok, PromptConfig(profile_tokens=cfg.profile_tokens, order="score"))
    assert score_order.profile == f"[1] {items[3]}\n\n[2] {items[2]}"


def test_profile_skips_an_item_too_big_for_the_rest_of_the_budget(tok):
    profile = [
        {"title": "a", "text": CORPUS[0], "date": "2020"},
        {"title": "b", "text": CORPUS[1], "date": "2021"},
        {"title": "big", "text": " ".join(CORPUS * 4), "date": "2022"},
    ]
    ex = example(profile=profile)
    small = f"[1] {render_profile_item(profile[0], 'generic')}\n\n[2] {render_profile_item(profile[1], 'generic')}"
    assert prompt_parts(ex, tok, PromptConfig(profile_tokens=n_tokens(small, tok) + 2)).profile == small


def test_profile_item_cut_when_none_fits_whole(tok):
    ex = example(profile=[{"title": "Long", "text": " ".join(CORPUS * 3)}])
    budget = n_tokens("[1] Title: Long\nText: The cat sleeps", tok)
    parts = prompt_parts(ex, tok, PromptConfig(profile_tokens=budget))
    assert parts.profile.startswith("[1] Title: Long\nText: The cat")
    assert f"[1] {render_profile_item(ex.profile[0], 'generic')}".startswith(parts.profile)
    assert n_tokens(parts.profile, tok) <= budget


# --- retrieval ------------------------------------------------------------------------


def test_bm25_picks_the_relevant_item():
    ex = example(input="Why did the stock market fall after the interest rates went up?")
    assert select_profile(ex, PromptConfig(retrieval="bm25", k=1)) == [ex.profile[2]]
    best_two = select_profile(ex, PromptConfig(retrieval="bm25", k=2, order="score"))
    assert best_two[0] is ex.profile[2] and len(best_two) == 2


def test_bm25_says_nothing_below_a_warning(caplog):
    """bm25s sets its own logger to DEBUG on import: one "Building index" line per query in every
    log that shows DEBUG (the experiment's, a server's) unless the ranking turns it down."""
    import logging

    caplog.set_level(logging.DEBUG)
    select_profile(example(input="Why did the stock market fall?"), PromptConfig(retrieval="bm25", k=1))
    assert not [r for r in caplog.records if r.name.startswith("bm25s") and r.levelno < logging.WARNING]


def test_abstract_query_uses_the_title_part_only():
    profile = [
        {"title": "Graph neural networks", "abstract": "We study message passing on graphs."},
        {"title": "Protein folding", "abstract": "We predict protein structure."},
    ]
    ex = example(
        task="abstract_generation",
        profile=profile,
        input='Generate an abstract for the title "Deep graph networks" using the following '
        "items: 1. protein 2. protein structure 3. protein folding",
    )
    assert select_profile(ex, PromptConfig(retrieval="bm25", k=1)) == [profile[0]]


def test_recent_uses_dates_else_list_order():
    profile = [
        {"text": "b", "date": "2021-05-01"},
        {"text": "a", "date": "2019-01-01"},
        {"text": "c", "date": "2022-01-01"},
    ]
    ex = example(profile=profile)
    assert select_profile(ex, PromptConfig(retrieval="recent", k=2)) == [profile[0], profile[2]]
    assert select_profile(ex, PromptConfig(retrieval="recent", k=2, order="score")) == [profile[2], profile[0]]
    undated = [{"text": t} for t in "abc"]
    assert select_profile(example(profile=undated), PromptConfig(retrieval="recent", k=2)) == undated[1:]


def test_no_retrieval_gives_a_query_only_prompt(tok):
    ex = example()
    prompt = build_prompt(ex, tok, PromptConfig(retrieval="none"))
    assert "### Profile" not in prompt and "Note 0" not in prompt and ex.input in prompt
    assert prompt.endswith("### Response\n")
    assert "### Profile\n[1] Title: Note 0" in build_prompt(ex, tok, PromptConfig())


# --- templates and features -----------------------------------------------------------


@pytest.mark.parametrize("chat", [False, True])
def test_labels_mask_exactly_the_prompt(tok, chat_tok, chat):
    tk = chat_tok if chat else tok
    ex, cfg = example(), PromptConfig()
    feats, prompt_ids = encode_for_training(ex, tk, cfg), encode_for_generation(ex, tk, cfg)
    n = len(prompt_ids)
    assert feats["input_ids"][:n] == prompt_ids
    assert feats["labels"][:n] == [IGNORE_INDEX] * n
    assert feats["labels"][n:] == feats["input_ids"][n:]
    assert IGNORE_INDEX not in feats["labels"][n:]
    assert feats["input_ids"][n:] == tk(ex.output, add_special_tokens=False)["input_ids"] + [tk.eos_token_id]
    assert tk.decode(prompt_ids) == build_prompt(ex, tk, cfg)


def test_chat_template_is_used_when_present(tok, chat_tok):
    ex = example()
    prompt = build_prompt(ex, chat_tok, PromptConfig())
    assert prompt.startswith("<|system|>\n") and prompt.endswith("<|end|>\n<|assistant|>\n")
    assert "<|user|>\n### Profile" in prompt
    assert build_prompt(ex, chat_tok, PromptConfig(use_chat_template=False)).endswith("### Response\n")
    with pytest.raises(UserError, match="no chat template"):
        build_prompt(ex, tok, PromptConfig(use_chat_template=True))


def test_template_without_system_role_gets_the_instructions_in_the_user_turn():
    no_system = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    prompt = build_prompt(example(), make_tokenizer(no_system), PromptConfig())
    assert prompt.startswith("<|user|>\nYou write personalized") and "### Query" in prompt


@pytest.mark.parametrize("side", ["left", "right"])
def test_collate_pads(side):
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(feats, pad_token_id=0, padding_side=side)
    if side == "left":
        assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
        assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    else:
        assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
        assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_collate_generation_features_have_no_labels(tok):
    ex = example()
    ids = [encode_for_generation(ex, tok, PromptConfig(retrieval=r)) for r in ("none", "all")]
    batch = collate(ids, pad_token_id=tok.pad_token_id)
    assert "labels" not in batch and batch["input_ids"].shape == (2, max(map(len, ids)))
    short = len(ids[0])
    assert batch["input_ids"][0, -short:].tolist() == ids[0]
    assert batch["attention_mask"][0].sum().item() == short


@pytest.mark.parametrize("chat", [False, True])
def test_the_profile_in_rs_prompt_alone(tok, chat_tok, chat):
    tk, ex = (chat_tok if chat else tok), example()
    both, separate = PromptConfig(), PromptConfig(profile_in="reasoner")
    query_only = encode_for_generation(ex, tk, PromptConfig(retrieval="none"))
    assert encode_for_generation(ex, tk, separate) == query_only  # G: the query alone
    assert encode_reasoner_prompt(ex, tk, separate) == encode_for_generation(ex, tk, both)  # R: profile + query
    assert encode_reasoner_prompt(ex, tk, both) is None  # the paper's: R reads G's tokens
    assert build_prompt(ex, tk, separate) == tk.decode(query_only)
    feats, plain = encode_for_training(ex, tk, separate), encode_for_training(ex, tk, both)
    assert "reasoner_input_ids" not in plain and feats["reasoner_input_ids"] == plain["input_ids"]
    n = len(query_only)  # the same response after both prompts
    assert feats["input_ids"][n:] == plain["input_ids"][len(plain["input_ids"]) - len(feats["input_ids"]) + n :]
    # decoding: R's prompts are padded on the left, like G's
    enc = generation_batch([ex, example(profile=[{"title": "t", "text": "One."}])], tk, separate, tk.pad_token_id)
    r_prompt = encode_reasoner_prompt(ex, tk, separate)
    assert enc["reasoner_input_ids"][0, -len(r_prompt) :].tolist() == r_prompt
    assert enc["reasoner_attention_mask"].shape == enc["reasoner_input_ids"].shape
    assert enc["input_ids"][0, -n:].tolist() == query_only


def test_collate_pads_rs_own_sequence_like_gs():
    feats = [{"input_ids": [5, 6], "reasoner_input_ids": [1, 2, 3]}, {"input_ids": [8], "reasoner_input_ids": [4]}]
    batch = collate(feats, pad_token_id=0, padding_side="right")
    assert batch["reasoner_input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["reasoner_attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="reasoner_input_ids"):
        collate([feats[0], {"input_ids": [8]}], pad_token_id=0)


@pytest.mark.parametrize(
    "bad",
    [
        dict(profile_tokens=0),
        dict(k=-1),
        dict(query_tokens=2.5),
        dict(retrieval="dense"),
        dict(order="newest"),
        dict(use_chat_template="yes"),
        dict(profile_in="generator"),
        dict(layout="paper"),
    ],
)
def test_prompt_config_validation(bad):
    with pytest.raises(UserError, match=next(iter(bad))):
        PromptConfig(**bad)


@pytest.mark.parametrize("chat", [False, True])
def test_the_official_layout_joins_profile_and_query_in_one_user_message(tok, chat_tok, chat):
    """The authors' released prompt: the profile block then the query with nothing between them, as
    the user's message, under the template's own default system prompt (none of ours)."""
    tk = chat_tok if chat else tok
    ex, cfg = example(), PromptConfig(layout="official")
    prompt = build_prompt(ex, tk, cfg)
    profile = prompt_parts(ex, tk, cfg).profile
    assert profile.startswith("[1] Title: Note 0") and profile + ex.input in prompt
    assert "###" not in prompt and SYSTEM_WITH_PROFILE not in prompt
    if chat:
        assert prompt == tk.apply_chat_template(
            [{"role": "user", "content": profile + ex.input}], tokenize=False, add_generation_prompt=True
        )
    feats = encode_for_training(ex, tk, cfg)  # the labels still mask exactly this prompt
    n = len(encode_for_generation(ex, tk, cfg))
    assert tk.decode(feats["input_ids"][:n]) == prompt and feats["labels"][:n] == [IGNORE_INDEX] * n
    rprompt = encode_reasoner_prompt(ex, tk, PromptConfig(layout="official", profile_in="reasoner"))
    assert tk.decode(rprompt) == prompt  # R's prompt: the same layout, the profile in it


@pytest.mark.parametrize("layout", ["flythinker", "official"])
@pytest.mark.parametrize("template", [None, "chatml"])
def test_a_conversation_of_one_user_message_is_exactly_the_training_prompt(sample_tokenizer, template, layout):
    import copy

    from tiny_models import GITCOMMITS

    from flythinker.data.conversation import encode_conversation
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig, encode_for_generation

    tok = copy.deepcopy(sample_tokenizer)
    if template:  # a ChatML template, as Qwen's and SmolLM2's
        tok.chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    ex = load_examples(GITCOMMITS / "sample" / "user_based", split="test", limit=1)[0]
    cfg = PromptConfig(retrieval="recent", k=2, profile_tokens=64, query_tokens=32, layout=layout)
    one = [{"role": "user", "content": ex.input}]
    assert encode_conversation(one, ex.user_id, ex.profile, tok, cfg) == encode_for_generation(ex, tok, cfg)
    talk = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "an answer"},
        *one,
    ]
    longer = encode_conversation(talk, ex.user_id, ex.profile, tok, cfg)
    text = tok.decode(longer)
    assert "Be terse." in text and "an answer" in text and len(longer) > len(encode_for_generation(ex, tok, cfg))
