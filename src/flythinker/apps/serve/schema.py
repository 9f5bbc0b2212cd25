"""The request bodies of the API, in OpenAI's shape, and what of OpenAI's API is refused.

Every field OpenAI defines for chat and text completions is known here: those the server implements
(``stop``, ``max_completion_tokens``, ``stream_options.include_usage``, text content parts, the
``system``/``developer``/``user``/``assistant`` roles, ``n = 1``, ``seed``, ...), and those it
accepts only at the value that changes nothing (``n = 1``, no ``logprobs``, no penalties, no
``logit_bias``, text ``response_format``, no ``tools``). Anything else is a 400 that names the
field (:func:`unsupported`); a field OpenAI does not define is a 400 too, never silently dropped.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TOKENS = 4096
MAX_STOPS = 4


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Item(Strict):
    """One profile item (an earlier text of the user)."""

    title: str | None = None
    text: str = Field(min_length=1)
    date: str | None = None


class Profile(Strict):
    items: list[Item]


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    model: str | None = None
    user: str | None = Field(None, min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    # OpenAI's, accepted only where they change nothing (unsupported() refuses the rest)
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("temperature", "top_p", "presence_penalty", "frequency_penalty")
    @classmethod
    def _finite(cls, v):
        if v is not None and not math.isfinite(v):  # NaN passes some pydantic versions' bounds
            raise ValueError("must be a finite number")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOPS or not all(stops):
            raise ValueError(f"up to {MAX_STOPS} non-empty strings")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def budget(self) -> int:
        return self.max_tokens or 256


class Chat(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)

    def budget(self) -> int:  # the newer name wins
        return self.max_completion_tokens or self.max_tokens or 256


class Completion(Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if not v or (isinstance(v, list) and not all(v)):
            raise ValueError("must not be empty")
        return v

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def unsupported(body: Sampling) -> tuple[str, str] | None:
    """``(param, message)`` for the first field whose value this server does not implement."""
    checks = [
        ("n", body.n not in (None, 1), "only n = 1 is supported"),
        ("logprobs", body.logprobs not in (None, False, 0), "logprobs are not supported"),
        ("top_logprobs", body.top_logprobs not in (None, 0), "logprobs are not supported"),
        ("presence_penalty", body.presence_penalty not in (None, 0), "penalties are not supported"),
        ("frequency_penalty", body.frequency_penalty not in (None, 0), "penalties are not supported"),
        ("logit_bias", bool(body.logit_bias), "logit_bias is not supported"),
        (
            "response_format",
            (body.response_format or {"type": "text"}).get("type") != "text",
            "only the text response format is supported",
        ),
        ("tools", bool(body.tools), "tools are not supported"),
        ("tool_choice", body.tool_choice not in (None, "none"), "tools are not supported"),
        (
            "stream_options",
            body.stream_options is not None and not body.stream,
            "stream_options is only allowed when stream is true",
        ),
    ]
    if isinstance(body, Completion):
        checks.append(
            ("prompt", isinstance(body.prompt, list) and len(body.prompt) != 1, "a list of exactly one prompt")
        )
    if isinstance(body, Chat):
        checks.append(("messages", body.messages[-1].role != "user", "the last message must be the user's"))
    for param, bad, message in checks:
        if bad:
            return param, f"{param}: {message}"
    return None
