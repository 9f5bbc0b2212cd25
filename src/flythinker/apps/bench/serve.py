"""`flythinker bench serve`: the server's throughput and latency against concurrency, batched
against one-request-at-a-time serving of the same model, in one run.

For every concurrency level, N client threads stream completions (``/v1/completions`` with
``stream: true``) from a server on 127.0.0.1 for a fixed number of requests each; the
one-at-a-time server is the same app with ``max_batch = 1``. Reported per level and server:
streamed tokens/s over the whole level (an event carries one token's text), p50/p95 request
latency, p50 time to first token, errors.

    flythinker bench serve --model runs/my-model --concurrency 1,4,16 --json bench_serve.json
"""

from __future__ import annotations

import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import typer

from flythinker.apps import write_json
from flythinker.choices import Dtype, ServeMode, value
from flythinker.errors import UserError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """The app under uvicorn on a thread of this process (127.0.0.1, a free port)."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark server did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _stream_one(port: int, body: dict, headers: dict | None = None) -> tuple[float, float, int]:
    """(latency s, time to first token s, tokens) of one streamed completion."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:200]!r}")
    first, pieces = None, 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        if json.loads(line[6:])["choices"][0]["text"]:
            pieces += 1
            first = first if first is not None else time.perf_counter() - t0
    conn.close()
    return time.perf_counter() - t0, first if first is not None else float("nan"), pieces


def _level(
    port: int, clients: int, per_client: int, body: dict, duration_s: float | None = None, headers: dict | None = None
) -> dict:
    """N client threads streaming completions one after another: ``per_client`` each, or as many
    as each can start within ``duration_s`` (the last one is waited for)."""
    results, errors, lock = [], [], threading.Lock()
    deadline = None if duration_s is None else time.perf_counter() + duration_s

    def client():
        n = 0
        while (n < per_client) if deadline is None else (time.perf_counter() < deadline):
            n += 1
            try:
                r = _stream_one(port, body, headers)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001  counted, reported
                with lock:
                    errors.append(str(e))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat, ttft = sorted(r[0] for r in results), sorted(r[1] for r in results)
    return {
        "clients": clients,
        "requests": len(results) + len(errors),
        "answered": len(results),
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": wall,
        "tokens": sum(r[2] for r in results),
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "p50_latency_s": statistics.median(lat) if lat else None,
        "p95_latency_s": _p95(lat),
        "p50_ttft_s": statistics.median(ttft) if ttft else None,
        "p95_ttft_s": _p95(ttft),
    }


def _p95(ordered: list[float]) -> float | None:
    """The 95th percentile of sorted values (nearest rank), None when there are none."""
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else None


def run_serve_bench(
    model_dir: Path,
    concurrency: list[int],
    per_client: int = 2,
    max_tokens: int = 32,
    mode: str = "auto",
    duration_s: float | None = None,
    dtype: str | None = None,
    log=print,
    device=None,
) -> dict:
    """Batched (continuous batching, max_batch = the highest concurrency) against one-at-a-time
    serving (max_batch = 1) of the same model; each level runs ``per_client`` requests per client,
    or for ``duration_s`` seconds."""
    from flythinker.apps.serve.app import make_app
    from flythinker.apps.serve.engine import Engine
    from flythinker.apps.serve.store import ProfileStore
    from flythinker.auto import load_model
    from flythinker.data.prompts import PromptConfig
    from flythinker.devices import pick_device

    model, tok = load_model(model_dir, dtype=dtype, device=pick_device(device))
    body = {
        "prompt": "Write the body of the commit 'parser: skip blank lines'.",
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "top_p": 0.95,
        "stream": True,
    }
    out = {
        "model": str(model_dir),
        "max_tokens": max_tokens,
        "per_client": per_client,
        "duration_s": duration_s,
        "mode": mode,
        "dtype": dtype or "as saved",
        "levels": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, max_batch in (("batched", max(concurrency)), ("one_at_a_time", 1)):
            engine = Engine(model, tok, max_batch=max_batch, max_queue=4 * max(concurrency), mode=mode)
            out["mode"] = engine.mode  # auto resolved
            server = _Server(
                make_app(model, tok, ProfileStore(Path(tmp) / f"{name}.db"), PromptConfig(), engine=engine)
            )
            try:
                _stream_one(server.port, {**body, "max_tokens": 2})  # warm-up
                for n in concurrency:
                    log(f"{name}: {n} client(s)")
                    out["levels"].setdefault(str(n), {})[name] = _level(server.port, n, per_client, body, duration_s)
            finally:
                server.close()
                engine.close()
    for n, row in out["levels"].items():
        row["speedup"] = row["batched"]["tokens_per_s"] / max(row["one_at_a_time"]["tokens_per_s"], 1e-9)
    return out


def print_serve_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    each = (
        f"{result['duration_s']:g} s of streamed completions per client"
        if result.get("duration_s")
        else f"{result['per_client']} streamed completions per client"
    )
    table = Table(title=f"serving {result['model']}: {each}, up to {result['max_tokens']} tokens each")
    for col in (
        "clients",
        "server",
        "requests",
        "tok/s",
        "p50 latency s",
        "p95 latency s",
        "p50 TTFT s",
        "errors",
        "batched / one",
    ):
        table.add_column(col, justify="right")
    for n, row in result["levels"].items():
        for name in ("batched", "one_at_a_time"):
            r = row[name]
            table.add_row(
                n,
                name,
                str(r["answered"]),
                f"{r['tokens_per_s']:.1f}",
                f"{r['p50_latency_s']:.2f}",
                f"{r['p95_latency_s']:.2f}",
                f"{r['p50_ttft_s']:.2f}",
                str(r["errors"]),
                f"{row['speedup']:.2f}" if name == "batched" else "",
            )
    Console().print(table)


def bench_serve_command(
    model: Path = typer.Option(..., "--model", help="A FlyThinker folder or a plain causal-LM folder."),
    concurrency: str = typer.Option("1,4,16", "--concurrency", help="Comma-separated numbers of concurrent clients."),
    per_client: int = typer.Option(2, "--per-client", help="Completions each client requests, one after another."),
    duration: float = typer.Option(
        None, "--duration", help="Instead: seconds each level runs (clients keep requesting)."
    ),
    max_tokens: int = typer.Option(32, "--max-tokens", help="Tokens per completion."),
    mode: ServeMode = typer.Option("auto", "--mode", help="The engine's mode, as flythinker serve's."),
    dtype: Dtype = typer.Option(None, "--dtype", help="Weights dtype (default: as saved)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU when there is one)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """Throughput and latency against concurrency: the batched server against one-at-a-time serving."""
    try:
        levels = [int(x) for x in concurrency.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--concurrency {concurrency!r}: comma-separated integers, e.g. 1,4,16") from None
    if not levels or min(levels) < 1 or per_client < 1 or max_tokens < 1:
        raise UserError("--concurrency, --per-client and --max-tokens must be ≥ 1")
    if duration is not None and duration <= 0:
        raise UserError(f"--duration must be > 0 seconds, got {duration}")
    from flythinker.devices import use_device
    from flythinker.extras import require

    require("serve", what="flythinker bench serve")
    mode, dtype = value(mode), value(dtype)
    result = run_serve_bench(model, levels, per_client, max_tokens, mode, duration, dtype, device=use_device(device))
    print_serve_table(result)
    if json_path is not None:
        write_json(result, json_path)
