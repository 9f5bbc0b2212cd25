"""The real `flythinker serve` over HTTP: the official OpenAI client unchanged, a load of concurrent
clients for a fixed time (every request answered, no errors), and a graceful shutdown that
finishes the streams in flight."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from serving import start_server


@pytest.fixture
def server(saved_tiny_model, tmp_path):
    proc, port = start_server(saved_tiny_model, tmp_path, key="k", stdout=subprocess.PIPE, mode="concurrent")
    yield proc, port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_the_official_openai_client_works_unchanged(server):
    openai = pytest.importorskip("openai")
    _, port = server
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    import urllib.request  # the client has no profile API: the profile goes in over plain HTTP

    urllib.request.urlopen(
        urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/users/ana/profile",
            method="PUT",
            data=json.dumps({"items": [{"title": "fix", "text": "Teach the parser to skip blank lines."}]}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
        ),
        timeout=30,
    )
    messages = [{"role": "user", "content": "Write the body of: docs: explain --quiet"}]
    kw = dict(model="flythinker", user="ana", messages=messages, max_tokens=12, temperature=0.8, top_p=0.95, seed=4)
    whole = client.chat.completions.create(**kw)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert 1 <= whole.usage.completion_tokens <= 12 and whole.choices[0].finish_reason in ("length", "stop")
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content  # same seed, same tokens, streamed or not
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    text = client.completions.create(model="flythinker", prompt="fix the parser", max_tokens=5, seed=1)
    assert text.object == "text_completion" and text.usage.completion_tokens <= 5
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="flythinker", user="nobody", messages=messages, max_tokens=4)
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):  # our JSON error, read by the client
        client.chat.completions.create(model="flythinker", messages=messages, max_tokens=-1)
    wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="flythinker", messages=messages, max_tokens=4)


def test_concurrent_clients_for_a_fixed_time_are_all_answered(server):
    """The load test of `flythinker bench serve --duration`, shortened: 8 clients for 4 s."""
    from flythinker.apps.bench.serve import _level

    proc, port = server
    body = {
        "prompt": "Write the body of the commit 'parser: skip blank lines'.",
        "max_tokens": 16,
        "temperature": 0.8,
        "top_p": 0.95,
        "stream": True,
    }
    r = _level(port, clients=8, per_client=1, body=body, duration_s=4.0, headers={"Authorization": "Bearer k"})
    assert r["errors"] == 0, r["error_samples"]
    assert r["answered"] == r["requests"] >= 8 and r["tokens"] > 0
    assert r["p95_latency_s"] >= r["p50_latency_s"] > 0 and r["p50_ttft_s"] > 0
    assert proc.poll() is None


def test_sigterm_finishes_the_streams_in_flight(server):
    import http.client
    import time

    proc, port = server
    auth = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    body = {"prompt": "fix the parser", "max_tokens": 400, "temperature": 1.0, "seed": 0}

    def post(stream: bool):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": stream}), auth)
        resp = conn.getresponse()
        assert resp.status == 200
        return resp

    whole = json.loads(post(False).read())  # the same seeded request, answered before the signal
    assert whole["usage"]["completion_tokens"] >= 100, "pick a seed whose answer is long"
    resp = post(True)
    first = resp.readline()  # the stream has started
    assert first.startswith(b"data: ")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):  # no new connections once shutting down
        c2 = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c2.request("GET", "/health")
        c2.getresponse()
    lines = [first] + [line for line in resp if line.strip()]
    assert lines[-1].strip() == b"data: [DONE]"  # the stream ran to its end ...
    chunks = [json.loads(line[6:])["choices"][0] for line in lines[:-1]]
    assert "".join(c["text"] for c in chunks) == whole["choices"][0]["text"]  # ... with every token
    assert chunks[-1]["finish_reason"] == whole["choices"][0]["finish_reason"]
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode in (0, -signal.SIGTERM) and "Finished server process" in log, log


def test_an_oversized_body_sent_slowly_still_gets_its_413(server):
    """The server reads what the client is still sending before it answers 413: closing on unread
    data would reset the connection, and the client would see an error instead of the answer."""
    import socket
    import time

    _, port = server
    size = 4 << 20
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer k\r\nConnection: close\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        time.sleep(0.3)  # the server has the headers (and could answer) before the body comes
        for _ in range(size // (64 << 10)):
            s.sendall(b"x" * (64 << 10))
        reply = b""
        while b"}}" not in reply:
            part = s.recv(65536)
            if not part:
                break
            reply += part
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
