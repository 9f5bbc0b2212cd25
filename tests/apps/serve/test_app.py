"""The HTTP API through FastAPI's test client, on the tests' tiny FlyThinker: profiles, OpenAI-shaped
completions (plain and streamed), the same tokens as model.generate, keys and JSON errors."""

from __future__ import annotations

import json

import pytest
import torch
from serving import start_server


@pytest.fixture
def client(saved_tiny_model, tmp_path):
    from fastapi.testclient import TestClient

    from flythinker.apps.serve.app import make_app
    from flythinker.apps.serve.engine import Engine
    from flythinker.apps.serve.store import ProfileStore
    from flythinker.auto import load_model
    from flythinker.data.prompts import PromptConfig

    model, tok = load_model(saved_tiny_model)
    store = ProfileStore(tmp_path / "p.db")
    engine = Engine(model, tok, max_batch=4, mode="sequential")
    cfg = PromptConfig(retrieval="recent", k=2, profile_tokens=64, query_tokens=32)
    app = make_app(model, tok, store, cfg, api_key="secret", engine=engine)
    c = TestClient(app, headers={"Authorization": "Bearer secret"})
    c.model, c.tok, c.cfg, c.store = model, tok, cfg, store
    yield c
    engine.close()
    store.close()


PROFILE = {
    "items": [
        {"title": "fix parser", "text": "Teach the parser to skip blank lines."},
        {"title": "docs", "text": "Document the new option.", "date": "2024-02-01"},
    ]
}


def test_profile_routes(client):
    assert client.get("/health").status_code == 200
    assert client.get("/v1/users/u1/profile").status_code == 404
    r = client.put("/v1/users/u1/profile", json=PROFILE)
    assert r.status_code == 200 and len(r.json()["items"]) == 2
    assert client.post("/v1/users/u1/profile/items", json={"text": "A third."}).status_code == 201
    got = client.get("/v1/users/u1/profile").json()
    assert got["user_id"] == "u1" and [i["text"] for i in got["items"]][-1] == "A third."
    assert client.delete("/v1/users/u1").status_code == 204
    assert client.get("/v1/users/u1/profile").status_code == 404


def test_chat_completion_is_the_models_own_decode_of_the_training_prompt(client):
    from flythinker.apps.serve.app import build_prompt_ids

    client.put("/v1/users/u1/profile", json=PROFILE)
    body = {
        "messages": [{"role": "user", "content": "Write the body of the commit 'parser: skip blanks'."}],
        "user": "u1",
        "max_tokens": 12,
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": 7,
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    ids = build_prompt_ids(client.tok, client.cfg, body["messages"], "u1", client.store.get("u1"))
    want = client.model.generate(
        torch.tensor([ids]),
        max_new_tokens=12,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        seed=7,
        eos_token_id=client.tok.eos_token_id,
    )[0].tolist()
    want = [t for t in want if t != client.tok.eos_token_id][: out["usage"]["completion_tokens"]]
    assert out["choices"][0]["message"]["content"] == client.tok.decode(want, skip_special_tokens=True)
    assert out["usage"]["prompt_tokens"] == len(ids)
    # the same request again gives the same answer; without the user, no profile is in the prompt
    assert client.post("/v1/chat/completions", json=body).json()["choices"] == out["choices"]
    assert len(build_prompt_ids(client.tok, client.cfg, [{"role": "user", "content": "q"}], None, [])) < len(ids)


def test_streaming_sends_chunks_then_done_and_matches_the_plain_answer(client):
    body = {
        "prompt": "Write the body of the commit 'docs: explain'.",
        "max_tokens": 10,
        "temperature": 0,
        "stream": True,
    }
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[len("data: ") :]) for x in lines[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    plain = client.post("/v1/completions", json={**body, "stream": False}).json()
    assert text == plain["choices"][0]["text"] and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=chat) as r:
        first = json.loads(next(x for x in r.iter_lines() if x)[len("data: ") :])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_a_vanishing_temperature_answers_as_greedy(client):
    """The contract fuzzer's find: a temperature of 2.2e-308 was a 500 (NaN probabilities)."""
    body = {"prompt": "Write the body of the commit 'docs: explain'.", "max_tokens": 6, "temperature": 0}
    greedy = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    tiny = client.post("/v1/completions", json={**body, "temperature": 2.2250738585072014e-308, "seed": 1})
    assert tiny.status_code == 200 and tiny.json()["choices"][0]["text"] == greedy


@pytest.mark.parametrize(
    "path,body,status",
    [
        ("/v1/chat/completions", {"messages": "not a list"}, 422),
        ("/v1/chat/completions", {"messages": []}, 422),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, 422),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": -0.5}, 422),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 422),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}]}, 400),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "user": "nobody"}, 404),
        ("/v1/completions", {"prompt": ""}, 422),
        ("/v1/completions", {"prompt": "x", "top_p": 0}, 422),
    ],
)
def test_bad_requests_are_json_errors_and_change_nothing(client, path, body, status):
    client.put("/v1/users/u1/profile", json=PROFILE)
    r = client.post(path, json=body)
    assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param"}
    assert len(client.get("/v1/users/u1/profile").json()["items"]) == 2


def test_keys_malformed_json_oversized_bodies_and_bad_items(client):
    from fastapi.testclient import TestClient

    anonymous = TestClient(client.app)
    assert anonymous.get("/health").status_code == 200
    assert anonymous.get("/v1/users/u1/profile").status_code == 401
    assert anonymous.get("/v1/users/u1/profile", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = client.post("/v1/completions", content=b"x" * (1 << 21), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "error" in r.json()
    for bad in ({"items": [{"title": "no text"}]}, {"items": "x"}):
        assert client.put("/v1/users/u2/profile", json=bad).status_code == 422
    r = client.put("/v1/users/u2/profile", json={"items": [{"text": "ok", "extra": 1}]})  # unknown: 400, named
    assert r.status_code == 400 and r.json()["error"]["param"] == "items.0.extra"
    assert client.get("/v1/users/u2/profile").status_code == 404  # nothing was created


def test_concurrent_requests_are_batched_and_all_answered(client):
    from concurrent.futures import ThreadPoolExecutor

    body = {"prompt": "Write a commit body.", "max_tokens": 8, "temperature": 0.7}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/completions", json=body), range(6)))
    assert all(a.status_code == 200 for a in answers)
    assert all(a.json()["usage"]["completion_tokens"] <= 8 for a in answers)


def test_flythinker_serve_listens_on_localhost_answers_and_stops_cleanly(saved_tiny_model, tmp_path):
    """The real command: uvicorn on 127.0.0.1, a key from the environment, SIGTERM ends it."""
    import signal
    import subprocess
    import urllib.request

    proc, port = start_server(saved_tiny_model, tmp_path, key="k", stdout=subprocess.PIPE)
    try:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            method="POST",
            data=json.dumps({"prompt": "hi", "max_tokens": 4}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
        )
        out = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] <= 4
        assert len(MALFORMED) >= 60
        for method, path, body, headers, status in MALFORMED:
            got = _send(port, method, path, body, {"Authorization": "Bearer k", **headers})
            assert 400 <= got[0] < 500 and (status is None or got[0] == status), (path, body, got)
            assert set(got[1]["error"]) == {"message", "type", "param"}, (path, body, got)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200
        assert _send(port, "GET", "/v1/users/u1/profile", None, {"Authorization": "Bearer k"})[0] == 404  # untouched
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=30)[0]
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the parent sees how it ended
    assert proc.returncode in (0, -signal.SIGTERM) and "Finished server process" in log, log
    assert f"http://127.0.0.1:{port}" in log


_CHAT = "/v1/chat/completions"
_J = {"Content-Type": "application/json"}
MALFORMED = [  # (method, path, body, headers, expected status or None for any 4xx)
    ("POST", _CHAT, b"{not json", _J, 422),
    ("POST", _CHAT, b"", _J, 422),
    ("POST", _CHAT, b"[]", _J, 422),
    ("POST", _CHAT, b"null", _J, 422),
    ("POST", _CHAT, b'"a string"', _J, 422),
    ("POST", _CHAT, b'{"messages": "hi"}', _J, 422),
    ("POST", _CHAT, b'{"messages": []}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user"}]}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": 5}]}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "alien", "content": "x"}]}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "top_p": 0}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "top_p": 2}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "user": ""}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "user": "nobody"}', _J, 404),
    ("POST", _CHAT, b'{"messages": [{"role": "system", "content": "x"}]}', _J, 400),
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes please"}', _J, 422),
    ("POST", _CHAT, b"x" * (1 << 21), _J, 413),
    ("POST", "/v1/completions", b'{"prompt": ""}', _J, 422),
    ("POST", "/v1/completions", b"{}", _J, 422),
    ("POST", "/v1/completions", b'{"prompt": ["a", "b"]}', _J, 422),  # the schema's maxItems: 1
    ("PUT", "/v1/users/u1/profile", b'{"items": "x"}', _J, 422),
    ("PUT", "/v1/users/u1/profile", b'{"items": [{"title": "no text"}]}', _J, 422),
    ("PUT", "/v1/users/u1/profile", b'{"items": [{"text": ""}]}', _J, 422),
    ("PUT", "/v1/users/u1/profile", b'{"items": [{"text": "x", "unknown": 1}]}', _J, 400),
    ("POST", "/v1/users/u1/profile/items", b'{"text": 3}', _J, 422),
    ("DELETE", "/v1/users/u1", None, {}, 404),
    ("GET", "/v1/nothing-here", None, {}, 404),
    ("POST", "/v1/users/u1/profile", b"{}", _J, 405),
]
_X = '"messages": [{"role": "user", "content": "x"}]'
MALFORMED += [  # each OpenAI field with a wrong type or a value this server does not implement
    ("POST", _CHAT, ("{" + _X + ", " + field + "}").encode(), _J, status)
    for field, status in [
        ('"model": 5', 422),
        ('"user": 5', 422),
        ('"max_completion_tokens": -1', 422),
        ('"max_completion_tokens": "x"', 422),
        ('"temperature": "hot"', 422),
        ('"top_p": "x"', 422),
        ('"seed": "x"', 422),
        ('"seed": 1' + "0" * 40, 422),
        ('"stream_options": "x"', 422),
        ('"stream": true, "stream_options": {"include_usage": "x"}', 422),
        ('"stream": true, "stream_options": {"other": 1}', 400),
        ('"stream_options": {"include_usage": true}', 400),
        ('"stop": 5', 422),
        ('"stop": ["a", "b", "c", "d", "e"]', 422),
        ('"stop": [""]', 422),
        ('"n": "x"', 422),
        ('"n": 2', 400),
        ('"logprobs": "x"', 422),
        ('"logprobs": true', 400),
        ('"top_logprobs": 3', 400),
        ('"presence_penalty": "x"', 422),
        ('"presence_penalty": 1', 400),
        ('"frequency_penalty": -1', 400),
        ('"logit_bias": {"5": "x"}', 422),
        ('"logit_bias": {"5": 1}', 400),
        ('"response_format": {"type": "json_object"}', 400),
        ('"response_format": "x"', 422),
        ('"tools": [{"type": "function"}]', 400),
        ('"tool_choice": "auto"', 400),
        ('"functions": []', 400),
        ('"frobnicate": true', 400),
        ('"temperature": NaN', 422),
        ('"temperature": Infinity', 422),
        ('"top_p": NaN', 422),
        ('"max_tokens": Infinity', 422),
        ('"user": "' + "u" * 300 + '"', 422),
    ]
] + [
    ("POST", _CHAT, b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}', _J, 422),
    ("POST", _CHAT, b'{"messages": [{"role": "tool", "content": "x"}]}', _J, 422),
    (
        "POST",
        _CHAT,
        b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        _J,
        400,
    ),
    ("POST", _CHAT, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", _J, None),  # deep nesting
    (
        "POST",
        _CHAT,
        b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
        _J,
        None,
    ),
    ("POST", _CHAT, ("{" + _X + "}").encode(), {"Content-Type": "text/plain"}, None),
    ("POST", _CHAT, b"<xml/>", {"Content-Type": "application/xml"}, None),
    ("POST", _CHAT, b'{"messages": [{"role": "' + b"r" * 500_000 + b'", "content": "x"}]}', _J, 422),
    ("POST", "/v1/completions", b'{"prompt": 5}', _J, 422),
    ("POST", "/v1/completions", b'{"prompt": "x", "echo": true}', _J, 400),
    ("POST", "/v1/completions", b'{"prompt": "x", "best_of": 2}', _J, 400),
    ("GET", "/v1/models/not-this-one", None, {}, 404),
]


def _send(port, method, path, body, headers):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_a_full_queue_is_503_with_retry_after_and_a_gone_client_frees_its_row(saved_tiny_model, tmp_path):
    import threading
    import time

    from fastapi.testclient import TestClient

    from flythinker.apps.serve.app import make_app
    from flythinker.apps.serve.engine import Engine, QueueFull
    from flythinker.apps.serve.store import ProfileStore
    from flythinker.auto import load_model
    from flythinker.data.prompts import PromptConfig

    model, tok = load_model(saved_tiny_model)
    release, started, seen = threading.Event(), threading.Event(), []

    class HeldBatch:  # a running batch held inside its prefill until the test lets it go; always token 5
        def add_prompts(self, prompts, pad_token_id):
            started.set()
            release.wait(30)
            seen.extend(prompts)
            return self.step(torch.zeros(len(prompts)))

        def step(self, tokens):
            logits = torch.zeros(len(tokens), 10)
            logits[:, 5] = 1e4
            return logits

        def keep(self, rows):
            pass

        def close(self):
            pass

    engine = Engine(None, tok, max_batch=1, max_queue=1, make_batch=HeldBatch)
    first = engine.submit([1, 2], max_tokens=3)
    assert started.wait(10)
    engine.submit([1, 2], max_tokens=3)  # waits in the queue
    with pytest.raises(QueueFull):
        engine.submit([1, 2], max_tokens=3)
    app = make_app(model, tok, ProfileStore(tmp_path / "p.db"), PromptConfig(), engine=engine)
    r = TestClient(app).post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "server_busy"
    release.set()
    assert list(first.tokens()) == [5, 5, 5] and first.finish_reason == "length"
    engine.close()
    # a request whose client left before its turn is never decoded
    release.clear()
    engine = Engine(None, tok, max_batch=1, max_queue=4, make_batch=HeldBatch)
    busy = engine.submit([1], max_tokens=1)
    started.clear()
    assert started.wait(10)
    gone = engine.submit([9], max_tokens=7)
    gone.cancel()
    release.set()
    assert list(busy.tokens()) == [5] and list(gone.tokens()) == [] and gone.finish_reason == "cancelled"
    time.sleep(0.2)
    assert [9] not in seen
    engine.close()


def test_the_playground_streams_both_answers_in_headless_chromium(saved_tiny_model, tmp_path):
    """The page at / in Debian's Chromium: it saves a profile through the API, then streams the
    personalized and the plain answer side by side; the screenshot is looked at, not just saved."""
    import os
    import re
    import shutil
    import struct
    import subprocess
    import urllib.parse
    import urllib.request
    import zlib

    from chromium import run_page

    browser = shutil.which("chromium") and "/usr/lib/chromium/chromium"  # the binary, not Debian's wrapper script
    if not browser or not os.path.exists(browser):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    server, port = start_server(saved_tiny_model, tmp_path, key="", stdout=subprocess.DEVNULL)
    try:
        query = urllib.parse.urlencode(
            {
                "user": "pg",
                "profile": "Teach the parser to skip blank lines.|Document it.",
                "prompt": "Write a commit body.",
                "max": "12",
                "autorun": "1",
            }
        )
        shot = tmp_path / "playground.png"
        got = run_page(
            browser,
            f"http://127.0.0.1:{port}/?{query}",
            shot,
            tmp_path / "chrome",
            done="document.body && document.body.dataset.done === '1'",
            read="{with: document.getElementById('with').textContent, "
            "without: document.getElementById('without').textContent}",
        )
        stored = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/users/pg/profile").read())
    finally:
        server.terminate()
        server.wait(30)
    assert got["with"].strip() and got["without"].strip()  # both panes streamed text
    assert [i["text"] for i in stored["items"]] == ["Teach the parser to skip blank lines.", "Document it."]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat = b"".join(
        data[m.start() + 4 : m.start() + 4 + struct.unpack(">I", data[m.start() - 4 : m.start()])[0]]
        for m in re.finditer(b"IDAT", data)
    )
    rows = zlib.decompress(idat)
    assert width == 1200 and height > 600 and len(set(rows[::97])) > 8  # a rendered page, not a blank image


def test_a_slow_first_token_gets_keep_alive_comments_and_streams_carry_proxy_headers(
    saved_tiny_model, tmp_path, monkeypatch
):
    import threading

    from fastapi.testclient import TestClient

    import flythinker.apps.serve.app as A
    from flythinker.apps.serve.engine import Engine
    from flythinker.apps.serve.store import ProfileStore
    from flythinker.auto import load_model
    from flythinker.data.prompts import PromptConfig

    model, tok = load_model(saved_tiny_model)
    release = threading.Event()

    class SlowBatch:  # the prefill takes a while (a long prompt, a busy GPU); then always token 5
        def add_prompts(self, prompts, pad_token_id):
            release.wait(30)
            return self.step(torch.zeros(len(prompts)))

        def step(self, tokens):
            logits = torch.zeros(len(tokens), 10)
            logits[:, 5] = 1e4
            return logits

        def keep(self, rows):
            pass

        def close(self):
            pass

    monkeypatch.setattr(A, "KEEPALIVE_S", 0.05)
    engine = Engine(None, tok, max_batch=2, make_batch=SlowBatch)
    app = A.make_app(model, tok, ProfileStore(tmp_path / "p.db"), PromptConfig(), engine=engine)
    threading.Timer(0.4, release.set).start()
    try:
        with TestClient(app).stream(
            "POST", "/v1/completions", json={"prompt": "x", "max_tokens": 2, "stream": True}
        ) as r:
            assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
            lines = [x for x in r.iter_lines() if x]
    finally:
        engine.close()
    assert lines[0] == ": keep-alive" and lines[-1] == "data: [DONE]"
    assert sum(x == ": keep-alive" for x in lines) >= 2 and any(x.startswith("data: {") for x in lines)
