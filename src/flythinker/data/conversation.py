"""A chat conversation as the trained model's prompt: the client's system/developer messages and
earlier turns around the training prompt, whose last user turn carries the profile where training
put it. With one user message and no system message it is exactly the training prompt.

    >>> ids = encode_conversation(messages, "alice", profile, tokenizer, cfg)   # doctest: +SKIP
"""

from __future__ import annotations

from flythinker.data.longlamp import Example
from flythinker.data.prompts import (
    SYSTEM_NO_PROFILE,
    SYSTEM_WITH_PROFILE,
    PromptConfig,
    _prompt_ids,
    _uses_chat_template,
    prompt_parts,
)
from flythinker.errors import UserError


def encode_conversation(
    messages: list[dict], user_id: str | None, profile: list[dict], tokenizer, cfg: PromptConfig
) -> list[int]:
    """Token ids of ``messages`` (``{"role", "content"}``, roles system, developer, user, assistant;
    the last one a user message) with ``profile`` retrieved and budgeted as training did."""
    from dataclasses import replace

    if not messages or messages[-1]["role"] != "user":
        raise UserError("messages: the last message must be the user's")
    system_extra = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    history = [m for m in messages[:-1] if m["role"] in ("user", "assistant")]
    ex = Example(
        id="request", user_id=user_id, input=messages[-1]["content"], output="", profile=profile, task="generic"
    )
    parts = prompt_parts(ex, tokenizer, cfg if profile else replace(cfg, retrieval="none"))
    if cfg.layout == "official":
        return _official(parts, system_extra, history, tokenizer, _uses_chat_template(tokenizer, cfg))
    system = SYSTEM_WITH_PROFILE if parts.profile else SYSTEM_NO_PROFILE
    system = "\n\n".join([system, *system_extra])
    user = (f"### Profile\n{parts.profile}\n\n" if parts.profile else "") + f"### Query\n{parts.query}"
    chat = _uses_chat_template(tokenizer, cfg)
    if not chat:  # the plain layout of training, the earlier turns before the query
        turns = "".join(f"### {m['role'].capitalize()}\n{m['content']}\n\n" for m in history)
        return _prompt_ids(f"{system}\n\n{turns}{user}\n\n### Response\n", tokenizer, chat)
    from jinja2 import TemplateError

    turns = [{"role": m["role"], "content": m["content"]} for m in history]
    try:
        msgs = [{"role": "system", "content": system}, *turns, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except TemplateError:  # templates that refuse a system turn (Gemma's): as training does
        first = turns[0]["content"] if turns else user
        msgs = [
            {"role": "user", "content": f"{system}\n\n{first}"},
            *turns[1:],
            *([{"role": "user", "content": user}] if turns else []),
        ]
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return _prompt_ids(text, tokenizer, chat)


def _official(parts, system_extra: list[str], history: list[dict], tokenizer, chat: bool) -> list[int]:
    """The authors' layout (``PromptConfig.layout: official``): profile and query in one user message;
    the template's own system prompt unless the client sent one."""
    user = parts.profile + parts.query
    if not chat:
        turns = "".join(f"{m['content']}\n\n" for m in history)
        return _prompt_ids("\n\n".join([*system_extra, f"{turns}{user}\n\n"]), tokenizer, chat)
    system = [{"role": "system", "content": "\n\n".join(system_extra)}] if system_extra else []
    turns = [{"role": m["role"], "content": m["content"]} for m in history]
    text = tokenizer.apply_chat_template(
        [*system, *turns, {"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    return _prompt_ids(text, tokenizer, chat)
