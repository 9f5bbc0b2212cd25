"""The real `flythinker serve` over HTTP: the official OpenAI client unchanged, a load of concurrent
clients for a fixed time (every request answered, no errors), and a graceful shutdown that
finishes the streams in flight."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

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


def test_the_official_client_gets_stop_usage_conversations_models_and_clear_refusals(server):
    openai = pytest.importorskip("openai")
    _, port = server
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == [client.models.retrieve(models.data[0].id).id]
    assert models.data[0].owned_by == "flythinker" and models.data[0].created > 0

    messages = [{"role": "user", "content": "Write the body of: parser: skip blank lines"}]
    kw = dict(model="flythinker", messages=messages, temperature=0.8, top_p=0.95, seed=7)
    whole = client.chat.completions.create(**kw, max_completion_tokens=24)  # the newer name of max_tokens
    text = whole.choices[0].message.content
    assert whole.usage.completion_tokens <= 24 and len(text) >= 6
    stop = text[3:5]  # cut as OpenAI cuts: before the first occurrence, the stop string left out
    cut = client.chat.completions.create(**kw, max_completion_tokens=24, stop=[stop, "\u2603never"])
    assert cut.choices[0].message.content == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(
            **kw, max_completion_tokens=24, stop=stop, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[: text.index(stop)]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1  # the usage chunk comes last

    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Write the body of: "},
                {"type": "text", "text": "parser: skip blank lines"},
            ],
        }
    ]
    same = client.chat.completions.create(**{**kw, "messages": parts}, max_completion_tokens=24)
    assert same.choices[0].message.content == text  # text parts are the same message
    talk = [
        {"role": "system", "content": "Answer in one line."},
        {"role": "developer", "content": "Be terse."},
        *messages,
        {"role": "assistant", "content": text},
        {"role": "user", "content": "Shorter, please."},
    ]
    other = client.chat.completions.create(**{**kw, "messages": talk}, max_completion_tokens=24)
    assert other.usage.prompt_tokens > whole.usage.prompt_tokens  # the history is in the prompt

    for bad, param in (
        (dict(n=2), "n"),
        (dict(logprobs=True), "logprobs"),
        (dict(presence_penalty=0.5), "presence_penalty"),
        (dict(response_format={"type": "json_object"}), "response_format"),
        (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
        (dict(extra_body={"frobnicate": 1}), "frobnicate"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**kw, max_tokens=4, **bad)
        assert e.value.body["param"] == param and param in e.value.body["message"], (bad, e.value.body)


def test_a_chunked_body_over_the_limit_is_a_413(server):
    """No Content-Length to read: the limit is counted as the chunks arrive."""
    import socket

    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer k\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * (64 << 10)
        for _ in range(40):  # 2.5 MB in chunks
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        reply = b""
        while b"}}" not in reply:
            part = s.recv(65536)
            if not part:
                break
            reply += part
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body.split(b"\r\n", 1)[-1] if body[:1] not in b"{" else body)["error"]["param"] is None


PROBE = """
import http.client, json, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
out, end = [], time.monotonic() + seconds
time.sleep(0.5)
while time.monotonic() < end:
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/health")
    assert c.getresponse().status == 200
    out.append(time.monotonic() - t0)
    c.close()
    time.sleep(0.25)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_64_clients_streaming_disconnecting_and_seeded_are_all_answered_and_health_stays_fast(server):
    """A load of fixed duration: 64 clients, a quarter each non-streaming, streaming, leaving
    mid-stream and seeded; every request is answered (200) or refused with 503 + Retry-After, never a
    5xx, and /health answers within 100 ms throughout. Prints p50/p95 latency and tokens/s."""
    import http.client
    import statistics
    import threading
    import time

    proc, port = server
    auth = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    deadline = time.monotonic() + 8.0
    results, lock = [], threading.Lock()

    def client(i: int):
        kind = ("whole", "stream", "leave", "seeded")[i % 4]
        while time.monotonic() < deadline:
            body = {
                "prompt": f"fix the parser, case {i}",
                "max_tokens": 16,
                "temperature": 0.8,
                "stream": kind != "whole",
                **({"seed": i} if kind == "seeded" else {}),
            }
            t0 = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("POST", "/v1/completions", json.dumps(body), auth)
            resp = conn.getresponse()
            tokens = 0
            if resp.status == 200 and kind == "whole":
                tokens = json.loads(resp.read())["usage"]["completion_tokens"]
            elif resp.status == 200:
                for line in resp:
                    tokens += line.startswith(b"data: {")
                    if kind == "leave" and tokens >= 2:
                        break  # the client goes away mid-stream
            else:
                resp.read()
            with lock:
                results.append((kind, resp.status, resp.getheader("Retry-After"), time.monotonic() - t0, tokens))
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    # /health probed from a process of its own: this one's 64 client threads share one GIL
    probe = subprocess.run([sys.executable, "-c", PROBE, str(port), "6.5"], capture_output=True, text=True, timeout=60)
    health = json.loads(probe.stdout)
    for t in threads:
        t.join(timeout=180)
    statuses = {s for _, s, _, _, _ in results}
    assert statuses <= {200, 503}, statuses
    assert all(r for _, s, r, _, _ in results if s == 503)  # a refusal says when to retry
    done = [r for r in results if r[1] == 200 and r[0] != "leave"]
    lat = sorted(r[3] for r in done)
    toks = sum(r[4] for r in results if r[1] == 200)
    print(
        f"\n64 clients, 8 s: {len(results)} requests, {len(done)} answered whole, "
        f"{sum(s == 503 for _, s, _, _, _ in results)} refused (503); latency p50 {statistics.median(lat):.2f} s, "
        f"p95 {lat[int(0.95 * (len(lat) - 1))]:.2f} s; {toks / 8.0:.0f} tokens/s; /health max "
        f"{1000 * max(health):.0f} ms over {len(health)} probes"
    )
    assert len(done) >= 32 and max(health) < 0.1, (len(done), health)
    assert proc.poll() is None
