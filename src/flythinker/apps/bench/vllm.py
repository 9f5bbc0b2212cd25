"""`flythinker bench vllm`: FlyThinker on vLLM against vLLM serving G alone, against transformers'
``generate`` of G alone and against our own decoder, in one run, and the server on each engine.

Every engine runs in a fresh process of its own, one after the other (vLLM in-process there,
``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so that the process's peak resident memory is the engine's).
For each: batch 1 latency (ms a token: the time to decode ``--new`` tokens less the time to
decode one, over the difference, the median of ``--repeat``), and the throughput at each batch size
(tokens/s: batch × ``--new`` tokens over the wall time, prefill included). Prompts are random
token ids of ``--prompt`` tokens; EOS is ignored, so every engine decodes the same number.
``--serve-clients N`` also runs ``flythinker serve`` with each engine and N streaming clients.

    flythinker bench vllm --model runs/my-model/final --dtype bfloat16 --batches 16,64 --json bench_vllm.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import typer

from flythinker.apps import write_json
from flythinker.choices import BenchDtype, value
from flythinker.errors import UserError

KINDS = ("vllm_flythinker", "vllm_generator", "hf_generator", "ours_flythinker")


def _prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(100, vocab, (length,), generator=g).tolist() for _ in range(batch)]


def _decoder(kind: str, folder: str, dtype: str):
    """``(decode(prompts, n) -> seconds, close())`` for one engine, built once."""
    import torch

    if kind.startswith("vllm"):
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        from flythinker.apps.vllm.serve import cpu_defaults

        kw = cpu_defaults({"max_model_len": 1024, "max_num_seqs": 64, "seed": 0})
        llm = LLM(model=folder, dtype=dtype, skip_tokenizer_init=True, **kw)

        def decode(prompts, n):
            params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
            t = time.perf_counter()
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
            assert all(len(o.outputs[0].token_ids) == n for o in outs)
            return time.perf_counter() - t

        return decode, llm.llm_engine.engine_core.shutdown  # its worker processes end with it
    if kind == "hf_generator":
        from flythinker.loading import load_causal_lm

        model = load_causal_lm(folder, "generator", dtype=getattr(torch, dtype))
    else:
        from flythinker.model import FlyThinker

        model = FlyThinker.from_pretrained(folder, dtype=getattr(torch, dtype))
    model.eval()

    def decode(prompts, n):
        ids = torch.tensor(prompts)  # equal lengths: no padding
        t = time.perf_counter()
        with torch.no_grad():
            if kind == "hf_generator":
                out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
                assert out.shape[1] == ids.shape[1] + n
            else:
                model.generate(ids, max_new_tokens=n, eos_token_id=[], pad_token_id=0, mode="sequential")
        return time.perf_counter() - t

    return decode, lambda: None


def _worker(
    kind: str, folder: str, dtype: str, prompt: int, new: int, batches: list[int], repeat: int, vocab: int
) -> dict:
    import resource

    decode, close = _decoder(kind, folder, dtype)
    one = _prompts(1, prompt, vocab, seed=0)
    decode(one, 2)  # warm-up
    per_token = []
    for _ in range(repeat):
        per_token.append((decode(one, new) - decode(one, 1)) / (new - 1))
    result = {"kind": kind, "ms_per_token_b1": 1000 * statistics.median(per_token), "tokens_per_s": {}}
    for b in batches:
        if kind == "hf_generator":
            continue  # the anchor is batch 1
        secs = decode(_prompts(b, prompt, vocab, seed=b), new)
        result["tokens_per_s"][str(b)] = b * new / secs
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    close()
    return result


def _run_worker(kind: str, folder: Path, args: dict) -> dict:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [sys.executable, "-m", "flythinker.apps.bench.vllm", kind, str(folder), json.dumps(args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise UserError(f"bench vllm: {kind} failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])


def _serve_tokens_per_s(model: Path, extra: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    """``flythinker serve MODEL *extra`` with ``clients`` streaming clients: tokens/s and p50 latency."""
    from flythinker.apps.bench.serve import _free_port, _stream_one

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "log", "w") as log:
        cmd = [sys.executable, "-m", "flythinker.cli", "serve", str(model), "--port", str(port), "--db", f"{tmp}/p.db"]
        proc = subprocess.Popen([*cmd, "--max-batch", str(clients), *extra], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(port, proc)
            body = {"model": "m", "prompt": "Write the body of: fix the parser", "max_tokens": max_tokens}
            body.update(stream=True, temperature=0.8)
            latencies, tokens = [], [0]
            lock = threading.Lock()

            def client():
                for _ in range(per_client):
                    lat, _, n = _stream_one(port, body)
                    with lock:
                        latencies.append(lat)
                        tokens[0] += n

            _stream_one(port, body)  # warm-up
            threads = [threading.Thread(target=client) for _ in range(clients)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            secs = time.perf_counter() - t
            return {
                "tokens_per_s": tokens[0] / secs,
                "p50_latency_s": statistics.median(latencies),
                "tokens": tokens[0],
            }
        finally:
            proc.terminate()
            proc.wait(60)


def _wait_for(port: int, proc, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UserError("bench vllm: the server did not start") from None
            time.sleep(0.5)


def bench_vllm_command(
    model: Path = typer.Option(..., "--model", help="A FlyThinker folder (flythinker train's RUN/final)."),
    dtype: BenchDtype = typer.Option("bfloat16", "--dtype", help="Every engine's dtype."),
    prompt: int = typer.Option(64, "--prompt", help="Prompt tokens."),
    new: int = typer.Option(64, "--new", help="Tokens decoded per row."),
    batches: str = typer.Option("16,64", "--batches", help="Comma-separated batch sizes for throughput."),
    repeat: int = typer.Option(3, "--repeat", help="Batch 1 latency: the median of this many."),
    serve_clients: int = typer.Option(0, "--serve-clients", help="Also serve with each engine to N clients (0: no)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the results here."),
) -> None:
    """FlyThinker on vLLM against vLLM's G alone, transformers' G alone and our decoder, side by side."""
    from flythinker.apps.vllm.serve import exported_folder
    from flythinker.auto import is_flythinker_folder
    from flythinker.extras import require

    require("vllm", what="flythinker bench vllm")
    model = Path(model).expanduser()
    if not is_flythinker_folder(model):
        raise UserError(f"{model}: not a FlyThinker folder")
    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--batches {batches!r}: comma-separated integers") from None
    if new < 2 or prompt < 1 or repeat < 1 or any(b < 1 for b in sizes):
        raise UserError("--new must be ≥ 2; --prompt, --repeat and the batches ≥ 1")
    dtype = value(dtype)
    vocab = json.loads((model / "generator" / "config.json").read_text())["vocab_size"]
    args = {"dtype": dtype, "prompt": prompt, "new": new, "batches": sizes, "repeat": repeat, "vocab": vocab}
    folders = {
        "vllm_flythinker": exported_folder(model),
        "vllm_generator": model / "generator",
        "hf_generator": model / "generator",
        "ours_flythinker": model,
    }
    rows = []
    for kind in KINDS:
        print(f"{kind} …", flush=True)
        rows.append(_run_worker(kind, folders[kind], args))
        print(f"  {rows[-1]}", flush=True)
    result = {"model": str(model), "threads": os.cpu_count(), **args, "rows": rows}
    if serve_clients:
        result["serve"] = {
            name: _serve_tokens_per_s(model, extra, serve_clients, 2, new)
            for name, extra in (("ours", ["--dtype", dtype]), ("vllm", ["--engine", "vllm", "--dtype", dtype]))
        }
    print_table(result)
    if json_path is not None:
        write_json(result, json_path)


def print_table(result: dict) -> None:
    by = {r["kind"]: r for r in result["rows"]}
    g = by["vllm_generator"]
    print(
        f"\n{'engine':<18}{'ms/token b1':>12}{'× vLLM G':>10}"
        + "".join(f"{'tok/s b' + b:>12}" for b in map(str, result["batches"]))
        + f"{'peak MB':>10}"
    )
    for kind in KINDS:
        r = by[kind]
        cells = "".join(f"{r['tokens_per_s'].get(str(b), float('nan')):>12.1f}" for b in result["batches"])
        print(
            f"{kind:<18}{r['ms_per_token_b1']:>12.2f}{r['ms_per_token_b1'] / g['ms_per_token_b1']:>10.2f}{cells}{r['peak_rss_mb']:>10.0f}"
        )
    for name, s in result.get("serve", {}).items():
        print(f"serve ({name}): {s['tokens_per_s']:.1f} tokens/s, p50 latency {s['p50_latency_s']:.2f} s")


if __name__ == "__main__":
    kind, folder, raw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(json.dumps(_worker(kind, folder, **raw)))
