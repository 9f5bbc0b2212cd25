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
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TOKENS = 4096
MAX_STOPS = 4
MAX_TEXT = 100_000  # characters of one profile item (the store's own limit)
MAX_USER = 256  # characters of a user id
NonEmpty = Annotated[str, Field(min_length=1)]
# a character str.strip() keeps, spelled out: the same class for pydantic's regex engine, Python's
# and JSON Schema's (ECMA-262), whose \s differ
NOT_BLANK = "[^\\t\\n\\x0b\\x0c\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"


def _whole(value):
    """JSON's 5.0 is the integer 5 (as JSON Schema reads it); nothing else becomes an int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class Strict(BaseModel):
    """A request body as the schema states it: no field it does not define, no coercion (``0`` is
    not ``false``, ``"5"`` is not ``5``)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Item(Strict):
    """One profile item (an earlier text of the user)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    title: str | None = None
    text: str = Field(min_length=1, max_length=MAX_TEXT, pattern=NOT_BLANK)  # not only whitespace
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


def _schema(accepted: dict) -> dict:
    """A field's JSON schema that says what this server accepts of a field OpenAI defines more
    widely (it replaces the field's ``anyOf``). pydantic still takes OpenAI's values, so
    :func:`unsupported` can answer the others with a 400 that names the field."""
    return {"anyOf": accepted["anyOf"] if "anyOf" in accepted else [accepted]}


NULL = {"type": "null"}


class Sampling(Strict):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # stream_options only with stream: true (else a 400, unsupported())
        json_schema_extra={
            "if": {"properties": {"stream_options": {"type": "object"}}, "required": ["stream_options"]},
            "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
        },
    )
    model: str | None = None
    user: str | None = Field(None, min_length=1, max_length=MAX_USER)
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Annotated[int, Field(ge=-(2**53), le=2**53)] | None = None  # exact in every JSON parser
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOPS)] | None = None
    # OpenAI's, accepted only where they change nothing (unsupported() refuses the rest)
    n: int | None = Field(None, json_schema_extra=_schema({"enum": [None, 1]}))
    logprobs: bool | int | None = Field(None, json_schema_extra=_schema({"enum": [None, False, 0]}))
    top_logprobs: int | None = Field(None, json_schema_extra=_schema({"enum": [None, 0]}))
    presence_penalty: float | None = Field(None, json_schema_extra=_schema({"enum": [None, 0]}))
    frequency_penalty: float | None = Field(None, json_schema_extra=_schema({"enum": [None, 0]}))
    logit_bias: dict[str, float] | None = Field(
        None, json_schema_extra=_schema({"anyOf": [NULL, {"type": "object", "maxProperties": 0}]})
    )
    response_format: dict | None = Field(
        None,
        json_schema_extra=_schema(
            {
                "anyOf": [
                    NULL,
                    {"type": "object", "maxProperties": 0},
                    {"type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}},
                ]
            }
        ),
    )
    tools: list | None = Field(None, json_schema_extra=_schema({"anyOf": [NULL, {"type": "array", "maxItems": 0}]}))
    tool_choice: str | dict | None = Field(None, json_schema_extra=_schema({"enum": [None, "none"]}))
    parallel_tool_calls: bool | None = None

    _integers = field_validator("max_tokens", "seed", "n", "top_logprobs", "logprobs", mode="before")(_whole)

    @field_validator("temperature", "top_p", "presence_penalty", "frequency_penalty")
    @classmethod
    def _finite(cls, v):
        if v is not None and not math.isfinite(v):  # NaN passes some pydantic versions' bounds
            raise ValueError("must be a finite number")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def budget(self) -> int:
        return self.max_tokens or 256


class Chat(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    _completion_integers = field_validator("max_completion_tokens", mode="before")(_whole)

    def budget(self) -> int:  # the newer name wins
        return self.max_completion_tokens or self.max_tokens or 256


class Completion(Sampling):
    prompt: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=1)]  # one non-empty prompt

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
    if isinstance(body, Chat):
        checks.append(("messages", body.messages[-1].role != "user", "the last message must be the user's"))
    for param, bad, message in checks:
        if bad:
            return param, f"{param}: {message}"
    return None


# --- responses, for the OpenAPI document (the routes return plain dicts of these shapes) --------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None


class ErrorBody(BaseModel):
    """Every error: ``{"error": {"message", "type", "param"}}``."""

    error: ErrorDetail


class ProfileOut(BaseModel):
    user_id: str
    items: list[Item]


ERRORS = {
    400: "a field the API does not define, a value this server does not implement, or a refusal",
    401: "missing or wrong API key (Authorization: Bearer KEY)",
    404: "unknown user or model",
    413: "the request body is over 1 MiB",
    422: "a value outside the schema",
    503: "the server is busy: retry after Retry-After seconds",
}


def errors(*codes: int) -> dict:
    """FastAPI's ``responses`` for these error statuses, each with the one error body."""
    return {code: {"model": ErrorBody, "description": ERRORS[code]} for code in codes}


# one server-sent event of a streamed answer (OpenAPI 3.1: the schema of each event)
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "a chunk in OpenAI's shape (chat.completion.chunk or text_completion), as JSON; "
            "the last event is [DONE]",
        }
    },
}
