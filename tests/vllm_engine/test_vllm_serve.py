"""``flythinker serve --engine vllm``: the official OpenAI client against our server in front of
vLLM, answering as our own engine does (greedy: the same text), profiles, keys and errors included."""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (docs/vllm.md)")
pytest.importorskip("fastapi", reason="the server's extra is not installed")
openai = pytest.importorskip("openai")
from serving import start_server  # noqa: E402

pytestmark = pytest.mark.vllm
VLLM = ["--engine", "vllm", "--dtype", "float32", "--vllm-arg", "kv_cache_memory_bytes=67108864", "--vllm-arg"]
VLLM += ["enforce_eager=true", "--vllm-arg", "max_model_len=256"]


@pytest.fixture(scope="module")
def model(tmp_path_factory, sample_tokenizer):
    """A tiny pair over the sample tokenizer, wide enough for vLLM's CPU attention (head size 64)."""
    from flythinker.model import FlyThinker
    from flythinker.tiny import family_config, random_lm

    n = len(sample_tokenizer)

    def lm(d, seed):
        cfg = family_config("llama", hidden=d, heads=d // 64, kv_heads=1, vocab=n, init_std=0.15, attn=None)
        cfg.eos_token_id, cfg.pad_token_id = sample_tokenizer.eos_token_id, sample_tokenizer.pad_token_id
        return random_lm(cfg, seed).eval()

    path = tmp_path_factory.mktemp("vllm-serve") / "model"
    FlyThinker(lm(256, 0), lm(128, 1), lam=0.5, generator_tokenizer=sample_tokenizer).save_pretrained(path)
    return path


def serve(model, tmp_path, extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (vLLM's processes write to it until they exit)
    proc, port = start_server(model, tmp_path, key="k", stdout=log, extra=extra, start_s=240)
    return proc, port, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)


def stop(proc):
    """SIGTERM the server; vLLM's processes under it must end with it (none left behind)."""
    import time

    import psutil

    children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        assert time.monotonic() < deadline, f"left behind: {[c.name() for c in children if c.is_running()]}"
        time.sleep(0.5)


def put_profile(port):
    urllib.request.urlopen(
        urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/users/ana/profile",
            method="PUT",
            data=json.dumps({"items": [{"title": "fix", "text": "Teach the parser to skip blank lines."}]}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
        ),
        timeout=30,
    )


def test_the_openai_client_gets_what_our_engine_answers(model, tmp_path):
    messages = [{"role": "user", "content": "Write the body of: docs: explain --quiet"}]
    greedy = dict(model="flythinker", user="ana", messages=messages, max_tokens=12, temperature=0)
    answers = {}
    for name, extra in (("ours", ["--dtype", "float32"]), ("vllm", VLLM)):
        proc, port, client = serve(model, tmp_path / name, extra)
        try:
            put_profile(port)
            answers[name] = client.chat.completions.create(**greedy).choices[0].message.content
            if name == "vllm":
                chunks = list(client.chat.completions.create(**greedy, stream=True))
                assert "".join(c.choices[0].delta.content or "" for c in chunks) == answers[name]
                sampled = client.completions.create(
                    model="flythinker", prompt="fix the parser", max_tokens=5, temperature=0.8
                )
                assert sampled.object == "text_completion" and 1 <= sampled.usage.completion_tokens <= 5
                with pytest.raises(openai.BadRequestError, match="seed"):  # vLLM's CPU build cannot seed one request
                    client.chat.completions.create(**{**greedy, "seed": 3})
                with pytest.raises(openai.NotFoundError):
                    client.chat.completions.create(**{**greedy, "user": "nobody"})
                with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
                    client.chat.completions.create(**{**greedy, "max_tokens": -1})
                wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0)
                with pytest.raises(openai.AuthenticationError):
                    wrong.chat.completions.create(**greedy)
        finally:
            stop(proc)
    assert answers["vllm"] == answers["ours"] and answers["ours"]
