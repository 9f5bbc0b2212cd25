"""The HTTP API: OpenAI-shaped completions personalized by a stored profile, and the profile routes.

FastAPI keeps the routes thin: a pydantic request model, one call into the store or the engine, a
response in OpenAI's shape. Errors are JSON, ``{"error": {"message", "type"}}``, with a status
that says whose fault it was; a refused request changes nothing in the store.

    >>> app = make_app(model, tokenizer, store, prompt_cfg, api_key=None)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from flythinker.apps.serve.engine import Engine, QueueFull
from flythinker.errors import UserError

MAX_BODY = 1 << 20  # bytes of one request body
DRAIN_LIMIT = 16 << 20  # bytes of an oversized body read before answering 413 (beyond: reset)
MAX_TOKENS = 4096


from pydantic import BaseModel, ConfigDict, Field  # noqa: E402  (FastAPI resolves route annotations here)


class Item(BaseModel):
    """One profile item (an earlier text of the user)."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = None
    text: str = Field(min_length=1)
    date: str | None = None


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Item]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(BaseModel):
    model: str | None = None
    user: str | None = Field(None, min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False


class Chat(Sampling):
    messages: list[Message] = Field(min_length=1)


class Completion(Sampling):
    prompt: str = Field(min_length=1)


def _error(status: int, message: str, kind: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def make_app(
    model,
    tokenizer,
    store,
    prompt_cfg,
    api_key: str | None = None,
    engine: Engine | None = None,
    model_name: str = "flythinker",
):
    """The FastAPI application over a loaded model, a :class:`ProfileStore` and a prompt config."""
    from fastapi import FastAPI

    engine = engine or Engine(model, tokenizer)
    app = FastAPI(title="FlyThinker", docs_url=None, redoc_url=None)
    app.state.engine, app.state.store = engine, store
    _errors_and_limits(app, api_key)
    _profile_routes(app, store)
    _completion_routes(app, tokenizer, store, prompt_cfg, engine, model_name)
    return app


def _errors_and_limits(app, api_key: str | None) -> None:
    """JSON errors with a status that says whose fault it was; body size and key checks."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(
            422,
            f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid"),
            "invalid_request_error",
        )

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc):
        return _error(
            exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500 else "server_error"
        )

    @app.exception_handler(UserError)
    async def user_error(_request, exc):
        return _error(400, str(exc), "invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(_request, exc):  # never a traceback to the client
        return _error(500, f"internal error ({type(exc).__name__})", "server_error")

    @app.middleware("http")
    async def limits(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            # read (and drop) what the client is still sending, up to a bound: closing on unread
            # data makes the kernel reset the connection, and the client would never see the 413
            drained = 0
            async for chunk in request.stream():
                drained += len(chunk)
                if drained > DRAIN_LIMIT:
                    break
            return _error(
                413, f"request body over {MAX_BODY} bytes", "invalid_request_error", headers={"Connection": "close"}
            )
        if (
            api_key
            and request.url.path.startswith("/v1/")
            and request.headers.get("authorization") != f"Bearer {api_key}"
        ):
            return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")
        return await call_next(request)


def _profile_routes(app, store) -> None:
    from pathlib import Path

    from fastapi.responses import HTMLResponse, Response
    from starlette.exceptions import HTTPException

    page = (Path(__file__).with_name("playground.html")).read_text(encoding="utf-8")

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def playground():
        """Edit a user's profile, type a prompt, watch the personalized and plain answers stream."""
        return page

    @app.put("/v1/users/{user_id}/profile")
    def put_profile(user_id: str, body: Profile):
        items = store.replace(user_id, [i.model_dump() for i in body.items])
        return {"user_id": user_id, "items": items}

    @app.post("/v1/users/{user_id}/profile/items", status_code=201)
    def add_item(user_id: str, body: Item):
        return store.append(user_id, body.model_dump())

    @app.get("/v1/users/{user_id}/profile")
    def get_profile(user_id: str):
        items = store.get(user_id)
        if items is None:
            raise HTTPException(404, f"unknown user {user_id!r}")
        return {"user_id": user_id, "items": items}

    @app.delete("/v1/users/{user_id}", status_code=204)
    def delete_user(user_id: str):
        if not store.delete(user_id):
            raise HTTPException(404, f"unknown user {user_id!r}")
        return Response(status_code=204)


def _completion_routes(app, tokenizer, store, prompt_cfg, engine: Engine, model_name: str) -> None:
    from fastapi.responses import StreamingResponse
    from starlette.exceptions import HTTPException

    def complete(query: str, body, chat: bool):
        profile = []
        if body.user is not None:
            profile = store.get(body.user)
            if profile is None:
                raise HTTPException(404, f"unknown user {body.user!r}")
        prompt_ids = build_prompt_ids(tokenizer, prompt_cfg, query, body.user, profile)
        try:
            req = engine.submit(prompt_ids, body.max_tokens or 256, body.temperature, body.top_p, body.seed)
        except QueueFull:
            return _error(503, "the server is busy; retry shortly", "server_busy", headers={"Retry-After": "1"})
        meta = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": body.model or model_name,
        }
        if body.stream:
            return StreamingResponse(_sse(req, tokenizer, meta, chat), media_type="text/event-stream")
        tokens = list(req.tokens())
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        choice = {"index": 0, "finish_reason": req.finish_reason}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        usage = {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(tokens),
            "total_tokens": len(prompt_ids) + len(tokens),
        }
        return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice], "usage": usage}

    @app.post("/v1/chat/completions")
    def chat_completions(body: Chat):
        users = [m.content for m in body.messages if m.role == "user"]
        if not users:
            raise HTTPException(400, "messages: no user message")
        return complete(users[-1], body, chat=True)

    @app.post("/v1/completions")
    def completions(body: Completion):
        return complete(body.prompt, body, chat=False)


def build_prompt_ids(tokenizer, prompt_cfg, query: str, user_id: str | None, profile: list[dict]) -> list[int]:
    """The training prompt for ``query`` with the user's stored profile (same retrieval, budgets
    and chat template as training)."""
    from dataclasses import replace

    from flythinker.data.longlamp import Example
    from flythinker.data.prompts import encode_for_generation

    ex = Example(id="request", user_id=user_id, input=query, output="", profile=profile, task="generic")
    cfg = prompt_cfg if profile else replace(prompt_cfg, retrieval="none")
    return encode_for_generation(ex, tokenizer, cfg)


def _sse(req, tokenizer, meta: dict, chat: bool):
    """Server-sent events: one chunk per new piece of text, then ``data: [DONE]``."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(delta: str | None, finish=None, first=False):
        if chat:
            d = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta is not None else {})
            choice = {"index": 0, "delta": d, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish}
        return f"data: {json.dumps({**meta, 'object': kind, 'choices': [choice]})}\n\n"

    tokens, sent = [], ""
    prefix, read = 0, 0  # tokens[prefix:read] were decoded last time: context for the next piece
    try:
        if chat:
            yield event(None, first=True)
        for tok in req.tokens():  # decode a short window per token, not the whole answer again
            tokens.append(tok)
            before = tokenizer.decode(tokens[prefix:read], skip_special_tokens=True)
            after = tokenizer.decode(tokens[prefix:], skip_special_tokens=True)
            if len(after) > len(before) and not after.endswith("\ufffd"):  # whole characters only
                yield event(after[len(before) :])
                sent += after[len(before) :]
                prefix, read = read, len(tokens)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if text.startswith(sent) and len(text) > len(sent):
            yield event(text[len(sent) :])
        yield event(None, finish=req.finish_reason)
        yield "data: [DONE]\n\n"
    finally:
        req.cancel()  # a client that went away frees its row
