"""The HTTP API: OpenAI-shaped completions personalized by a stored profile, and the profile routes.

FastAPI keeps the routes thin: a pydantic request model, one call into the store or the engine, a
response in OpenAI's shape. Errors are JSON, ``{"error": {"message", "type"}}``, with a status
that says whose fault it was; a refused request changes nothing in the store.

    >>> app = make_app(model, tokenizer, store, prompt_cfg, api_key=None)   # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import json
import time
import uuid

from flythinker.apps.serve.engine import Engine, QueueFull
from flythinker.apps.serve.schema import (
    MAX_USER,
    SSE_EVENT,
    Chat,
    Completion,
    Item,
    Profile,
    ProfileOut,
    errors,
    unsupported,
)
from flythinker.apps.serve.text import TextStream
from flythinker.errors import UserError

MAX_BODY = 1 << 20  # bytes of one request body
DRAIN_LIMIT = 16 << 20  # bytes of an oversized body read before answering 413 (beyond: reset)
KEEPALIVE_S = 15.0  # a comment line on a stream that has sent nothing for this long (proxies time out)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _error(status: int, message: str, kind: str, headers: dict | None = None, param: str | None = None):
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


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
    _model_routes(app, model_name)
    _completion_routes(app, tokenizer, store, prompt_cfg, engine, model_name)
    _document_the_key(app, api_key)
    return app


def _document_the_key(app, api_key: str | None) -> None:
    """With a key, the OpenAPI document says what the middleware enforces: every ``/v1/`` route
    takes ``Authorization: Bearer KEY`` and answers 401 without it."""
    if not api_key:
        return
    build = app.openapi

    def openapi():
        if app.openapi_schema is None:
            doc = build()  # FastAPI's document, kept as app.openapi_schema
            doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
            }
            error = {"$ref": "#/components/schemas/ErrorBody"}
            for path, operations in doc["paths"].items():
                for op in operations.values() if path.startswith("/v1/") else ():
                    op["security"] = [{"bearer": []}]
                    op["responses"]["401"] = {
                        "description": "missing or wrong API key (Authorization: Bearer KEY)",
                        "content": {"application/json": {"schema": error}},
                    }
        return app.openapi_schema

    app.openapi = openapi


def _allowed_methods(app, scope) -> str:
    """The methods some route of ``app`` takes at this request's path (a 405's ``Allow``)."""
    from starlette.routing import Match

    methods = set()
    for route in app.router.routes:
        if getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def _errors_and_limits(app, api_key: str | None) -> None:
    """JSON errors with a status that says whose fault it was; body size and key checks."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc):
        first = _telling_error(exc.errors())
        where = ".".join(str(x) for x in first.get("loc", ()) if _is_field(x)) or None
        if first.get("type") == "extra_forbidden":  # as OpenAI: a field it does not know is a 400
            return _error(400, f"Unrecognized request argument supplied: {where}", "invalid_request_error", param=where)
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid")
        return _error(422, message, "invalid_request_error", param=where)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method of the path, not only those of the first route matched
            headers["Allow"] = _allowed_methods(app, request.scope)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error(exc.status_code, str(exc.detail), kind, headers=headers or None)

    @app.exception_handler(UserError)
    async def user_error(_request, exc):
        return _error(400, str(exc), "invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(_request, exc):  # never a traceback to the client
        return _error(500, f"internal error ({type(exc).__name__})", "server_error")

    @app.middleware("http")
    async def key(request: Request, call_next):
        given = request.headers.get("authorization", "").encode()
        if api_key and request.url.path.startswith("/v1/") and not hmac.compare_digest(given, expected):
            return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")
        return await call_next(request)

    expected = f"Bearer {api_key}".encode() if api_key else b""
    app.add_middleware(BodyLimit, limit=MAX_BODY)


def _is_field(part) -> bool:
    """A part of a validation error's location that names a field or an index (not ``body`` or a
    union branch pydantic tried, like ``str`` or ``list[constrained-str]``)."""
    return isinstance(part, int) or (part.isidentifier() and part not in ("body", "str", "int", "float", "bool"))


def _telling_error(errors: list[dict]) -> dict:
    """The error to report: for a value a union refused, the branch of its own type says why (a
    list of two prompts: "at most 1 item", not "should be a valid string")."""
    for error in errors:
        if not error.get("type", "").endswith("_type"):
            return error
    return errors[0] if errors else {}


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is a 413, counted as it arrives, so a
    chunked body (no Content-Length) is held to it too. The body is read here, up to the limit, and
    handed on; past the limit what the client still sends is drained (bounded) before answering."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > self.limit)
        chunks, size, more = [], 0, True
        while more and not too_big:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more, too_big = message.get("more_body", False), size > self.limit
        if too_big:
            drained = size
            while more and drained <= DRAIN_LIMIT:
                message = await receive()
                drained += len(message.get("body", b""))
                more = message.get("more_body", False)
            response = _error(
                413, f"request body over {self.limit} bytes", "invalid_request_error", headers={"Connection": "close"}
            )
            return await response(scope, receive, send)
        await self.app(
            scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), send
        )


def _replay(messages: list, then=None):
    """A receive() that gives ``messages`` first, then defers to ``then`` (a disconnect, say)."""

    async def receive():
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def _profile_routes(app, store) -> None:
    from pathlib import Path

    from fastapi import Path as PathParam
    from fastapi.responses import HTMLResponse, Response
    from starlette.exceptions import HTTPException

    page = (Path(__file__).with_name("playground.html")).read_text(encoding="utf-8")
    user = PathParam(min_length=1, max_length=MAX_USER)  # a user id, as the store takes it
    ok = {200: {"model": ProfileOut, "description": "the user's profile"}}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def playground():
        """Edit a user's profile, type a prompt, watch the personalized and plain answers stream."""
        return page

    @app.put("/v1/users/{user_id}/profile", responses={**ok, **errors(400, 413, 422)})
    def put_profile(body: Profile, user_id: str = user):
        items = store.replace(user_id, [i.model_dump() for i in body.items])
        return {"user_id": user_id, "items": items}

    @app.post(
        "/v1/users/{user_id}/profile/items",
        status_code=201,
        responses={201: {"model": Item, "description": "the item, stored"}, **errors(400, 413, 422)},
    )
    def add_item(body: Item, user_id: str = user):
        return store.append(user_id, body.model_dump())

    @app.get("/v1/users/{user_id}/profile", responses={**ok, **errors(404, 422)})
    def get_profile(user_id: str = user):
        items = store.get(user_id)
        if items is None:
            raise HTTPException(404, f"unknown user {user_id!r}")
        return {"user_id": user_id, "items": items}

    @app.delete("/v1/users/{user_id}", status_code=204, responses=errors(404, 422))
    def delete_user(user_id: str = user):
        if not store.delete(user_id):
            raise HTTPException(404, f"unknown user {user_id!r}")
        return Response(status_code=204)


def _model_routes(app, model_name: str) -> None:
    """``GET /v1/models``: the one model this server serves (clients and UIs ask first)."""
    from fastapi import Path as PathParam
    from starlette.exceptions import HTTPException

    created = int(time.time())

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "flythinker"}],
        }

    served = PathParam(examples=[model_name])  # the one id that answers 200

    @app.get("/v1/models/{model_id}", responses=errors(404))
    async def model_info(model_id: str = served):
        if model_id != model_name:
            raise HTTPException(404, f"unknown model {model_id!r} (this server serves {model_name!r})")
        return {"id": model_name, "object": "model", "created": created, "owned_by": "flythinker"}


def _completion_routes(app, tokenizer, store, prompt_cfg, engine: Engine, model_name: str) -> None:
    from fastapi.responses import StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    async def complete(body, messages: list[dict], chat: bool):
        bad = unsupported(body)
        if bad is not None:
            return _error(400, bad[1], "invalid_request_error", param=bad[0])
        profile = []
        if body.user is not None:
            profile = await run_in_threadpool(store.get, body.user)  # a database read, off the loop
            if profile is None:
                raise HTTPException(404, f"unknown user {body.user!r}")
        # retrieval, sentence budgets and the chat template: CPU work, kept off the event loop
        prompt_ids = await run_in_threadpool(build_prompt_ids, tokenizer, prompt_cfg, messages, body.user, profile)
        try:
            req = engine.submit(prompt_ids, body.budget(), body.temperature, body.top_p, body.seed)
        except QueueFull:
            return _error(503, "the server is busy; retry shortly", "server_busy", headers={"Retry-After": "1"})
        meta = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": body.model or model_name,
        }
        text = TextStream(tokenizer, body.stops())
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _sse(req, text, meta, chat, len(prompt_ids) if usage else None)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        try:
            async for tok in req.atokens():
                text.push(tok)
                if text.stopped:  # the stop string: the row leaves the batch
                    req.cancel()
                    break
        finally:
            req.cancel()  # a client gone mid-answer frees its row (a no-op once it ended)
        text.finish()
        choice = {"index": 0, "finish_reason": "stop" if text.stopped else req.finish_reason}
        content = text.released()
        choice.update({"message": {"role": "assistant", "content": content}} if chat else {"text": content})
        n = len(text.tokens)
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": n, "total_tokens": len(prompt_ids) + n}
        return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": [choice], "usage": usage}

    answers = {200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}, "description": "the answer"}}
    answers.update(errors(400, 404, 413, 422, 503))

    @app.post("/v1/chat/completions", responses=answers)
    async def chat_completions(body: Chat):
        return await complete(body, [{"role": m.role, "content": m.text()} for m in body.messages], chat=True)

    @app.post("/v1/completions", responses=answers)
    async def completions(body: Completion):
        return await complete(body, [{"role": "user", "content": body.text()}], chat=False)


def build_prompt_ids(
    tokenizer, prompt_cfg, messages: list[dict], user_id: str | None, profile: list[dict]
) -> list[int]:
    """The training prompt for the conversation with the user's stored profile (same retrieval,
    budgets and chat template as training; one user message is exactly the training prompt)."""
    from flythinker.data.conversation import encode_conversation

    return encode_conversation(messages, user_id, profile, tokenizer, prompt_cfg)


async def _sse(req, text: TextStream, meta: dict, chat: bool, prompt_tokens: int | None):
    """Server-sent events: one chunk per new piece of text, keep-alive comments while the first
    tokens are slow, a usage chunk when asked (``stream_options.include_usage``), ``data: [DONE]``."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(delta: str | None, finish=None, first=False):
        if chat:
            d = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta is not None else {})
            choice = {"index": 0, "delta": d, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish}
        return f"data: {json.dumps({**meta, 'object': kind, 'choices': [choice]})}\n\n"

    try:
        if chat:
            yield event(None, first=True)
        async for tok in req.atokens(keepalive=KEEPALIVE_S):
            if tok is None:
                yield ": keep-alive\n\n"
                continue
            piece = text.push(tok)
            if piece:
                yield event(piece)
            if text.stopped:
                req.cancel()
                break
        rest = text.finish()
        if rest:
            yield event(rest)
        yield event(None, finish="stop" if text.stopped else req.finish_reason)
        if prompt_tokens is not None:
            n = len(text.tokens)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
            yield f"data: {json.dumps({**meta, 'object': kind, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        req.cancel()  # the client went away mid-stream: its row leaves the batch
