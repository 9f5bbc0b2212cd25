"""`flythinker bench decode`: per-token latency and throughput of every decoder, side by side.

Random-weight Qwen2 Generator and Reasoner (≈40M parameters each by default, fp32 on CPU);
every configuration runs in interleaved repeats (medians), EOS never stops a run:

  generator               G alone: our SFT loop (λ = 0, the Reasoner never runs)
  reasoner                R alone: its prefill and one step per token (hidden states only)
  sequential              FlyThinker's reference decoder: R then G at every step
  sequential_all_threads  the same, each model using every core in turn (no concurrency)
  concurrent_<backend>    FlyThinker with R's step overlapped; ``concurrent`` = the fastest
  think_then_generate     G writes K reasoning tokens before the response (time per response token)
  hf_generate             transformers' ``generate`` on the same G (greedy; tokens checked equal)
  hf_generate_compiled    (GPU) the same with a static cache, its step compiled with CUDA graphs
  generator_captured      G alone, captured: static cache, one recorded step (decoding/captured.py)
  captured                FlyThinker captured: R's and G's steps in one recorded step
  shared_base             G and R as one base (R = G's base where they differ but share a shape):
                          both rows of a step in one forward, every core (decoding/shared_base.py)
  captured_shared_base    (GPU) the same, captured

Beside each latency, each configuration's peak memory: the weights it reads plus the working
memory its run added (``memory_bytes``; decode_runs.py says how it is measured).

Single models and ``sequential`` get the threads each model gets in a concurrent decoder
(``--threads-per-model``, default half the cores), so "× max(G, R)" compares like with like.

    >>> result = run_decode_bench(DecodeBenchConfig(new=16, repeats=1))  # doctest: +SKIP
    >>> result["ms_per_token"]["concurrent"] / max(result["ms_per_token"]["generator"],
    ...                                            result["ms_per_token"]["reasoner"])  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

from flythinker.apps import write_json
from flythinker.apps.bench.decode_runs import available_backends, build_runs, time_runs, weights_read
from flythinker.apps.bench.machine import loadavg, machine_info, measure_bandwidth, weight_bytes
from flythinker.choices import BenchDtype, value
from flythinker.errors import UserError

TARGETS = {  # ratio: bound (batch 1 unless said otherwise)
    "concurrent_over_max_single": 1.05,
    "captured_over_generator_captured": 1.15,
    "captured_over_hf_generate_compiled": 1.0,
    "captured_shared_base_over_generator_captured": 1.10,
    "shared_base_over_hf_generate_all_cores": 1.0,
    "concurrent_over_sequential": 0.55,
    "generator_over_hf_generate": 1.0,
}
THROUGHPUT_TARGET = 4.0  # tokens/s at the throughput batch ≥ this × tokens/s at batch 1


@dataclass
class DecodeBenchConfig:
    """What `flythinker bench decode` measures (G and R share sizes unless the reasoner_* are set)."""

    batch: int = 1
    throughput_batch: int = 8
    prompt: int = 64
    new: int = 128
    think_tokens: int = 64
    repeats: int = 3
    hidden: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 2
    intermediate: int = 1536
    vocab: int = 32000
    """With tied embeddings, 512 × 32000 + 8 layers ≈ 40.5M parameters."""
    reasoner_hidden: int | None = None
    reasoner_layers: int | None = None
    lam: float = 0.5
    threads_per_model: int | None = None
    backends: list[str] = field(default_factory=list)
    """Concurrent backends to time (empty: every one that runs on this hardware)."""
    only: list[str] = field(default_factory=list)
    """Configurations to time (empty: all; generator, reasoner and sequential always run)."""
    seed: int = 0
    generator: str | None = None
    """A local causal-LM folder for G instead of the random model (e.g. the pulled SmolLM2)."""
    reasoner: str | None = None
    """A local causal-LM folder for R (default: the generator's folder, loaded a second time)."""
    dtype: str = "float32"
    """Weights dtype of the models: float32 or bfloat16."""
    full: bool = False
    """The full protocol: every concurrent backend, and the captured rows on a CPU too (where they
    run eagerly); otherwise the fastest backend ("auto") only."""

    def __post_init__(self):
        for name in ("batch", "throughput_batch", "prompt", "new", "repeats", "hidden", "layers", "heads", "vocab"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.think_tokens < 0:
            raise UserError(f"--think-tokens must be ≥ 0, got {self.think_tokens}")
        if self.reasoner and not self.generator:
            raise UserError("--reasoner needs --generator (a random pair has no folders)")
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"--dtype must be float32 or bfloat16, got {self.dtype!r}")


def local_pair(cfg: DecodeBenchConfig):
    """FlyThinker over the local folders of ``cfg`` (R defaults to a second copy of G)."""
    from flythinker.loading import load_causal_lm, load_tokenizer
    from flythinker.model import FlyThinker

    folders = (cfg.generator, cfg.reasoner or cfg.generator)
    g, r = (load_causal_lm(f, key, dtype=cfg.dtype).eval() for f, key in zip(folders, ("--generator", "--reasoner")))
    toks = [load_tokenizer(f) for f in folders]
    g.generation_config.eos_token_id = None  # a benchmark run never stops early (ours ignores EOS too)
    return FlyThinker(g, r, lam=cfg.lam, generator_tokenizer=toks[0], reasoner_tokenizer=toks[1]).eval()


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_decode_bench(cfg: DecodeBenchConfig, model=None, device: str = "cpu", log=print) -> dict:
    """Time every decoder on ``model`` (default: the random ≈40M pair); returns the JSON dict."""
    import torch

    from flythinker import FlyThinker
    from flythinker.decoding.concurrent import ConcurrentDecoder, default_threads, resolve_backend
    from flythinker.tiny import qwen2_config, random_pair

    if model is None and cfg.generator:
        model = local_pair(cfg)
        cfg.vocab = min(cfg.vocab, model.generator.get_input_embeddings().num_embeddings)
    if model is None:
        g = qwen2_config(cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads, cfg.intermediate, cfg.vocab)
        r = qwen2_config(cfg.reasoner_hidden or cfg.hidden, cfg.reasoner_layers or cfg.layers, cfg.heads,
                         cfg.kv_heads, cfg.intermediate, cfg.vocab)
        model = random_pair(g, r, cfg.lam, device=device, seed=cfg.seed,
                            dtype=torch.bfloat16 if cfg.dtype == "bfloat16" else None)
    sft = FlyThinker(generator=model.generator, reasoner=model.reasoner, lam=0.0).eval()  # same weights, λ = 0
    on_cpu = device == "cpu"
    cfg.threads_per_model = cfg.threads_per_model or (default_threads() if on_cpu else None)
    backends = cfg.backends or (available_backends(model) if cfg.full else [resolve_backend(model, "auto")])
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = {"latency": cfg.batch, "throughput": cfg.throughput_batch}
    inputs = {
        key: (torch.randint(1, cfg.vocab, (b, cfg.prompt), generator=gen).to(device),
              torch.ones(b, cfg.prompt, dtype=torch.long, device=device))
        for key, b in batches.items()
    }
    result = {"settings": asdict(cfg), "device": device, "loadavg_start": loadavg(), "backends": backends,
              "machine": machine_info(), "startup_s": {},
              "params": {"generator": n_params(model.generator), "reasoner": n_params(model.reasoner)},
              "weight_bytes": weight_bytes(model), "bandwidth": measure_bandwidth() if on_cpu else None}
    decoders = {}
    try:
        for name in backends:
            t0 = time.perf_counter()
            decoders[name] = ConcurrentDecoder(model, name, threads_per_model=cfg.threads_per_model)
            result["startup_s"][name] = round(time.perf_counter() - t0, 3)
        runs = build_runs(model, sft, cfg, decoders, on_cpu)
        keep = set(cfg.only) | {"generator", "reasoner", "sequential"} | {f"concurrent_{b}" for b in backends}
        runs = {name: run for name, run in runs.items() if not cfg.only or name in keep}
        times, outputs, peaks, result["failed"] = time_runs(runs, inputs, cfg, device, log)
        result.update(_summarise(cfg, times, outputs, batches))
        result["memory_bytes"] = {  # weights it reads + working memory at its peak (decode_runs.py)
            key: {name: weights_read(name, result["weight_bytes"]) + (peak or 0) for name, peak in by.items()}
            for key, by in peaks.items()
        }
        result["working_memory_bytes"] = peaks
    finally:
        for dec in decoders.values():
            dec.close()
    result["loadavg_end"] = loadavg()
    if result["bandwidth"]:  # the floor per token when both models share one memory system
        result["bandwidth_bound_ms"] = (1000 * sum(result["weight_bytes"].values())
                                        / (result["bandwidth"]["all_threads_gb_s"] * 1e9))
    return result


def _summarise(cfg: DecodeBenchConfig, times: dict, outputs: dict, batches: dict) -> dict:
    ms, tps, ratio_b = {}, {}, {}
    for name, by in times.items():
        ms[name] = 1000 * statistics.median(by["latency"][1:]) / cfg.new  # [0] is the warm-up
        tps[name] = batches["throughput"] * cfg.new / statistics.median(by["throughput"][1:])
        ratio_b[name] = tps[name] / (batches["latency"] * 1000 / ms[name])
    concurrent = [n for n in ms if n.startswith("concurrent_")]
    equal, first = {}, {}
    for key in batches:
        out = outputs[key]
        if "hf_generate" in out:
            equal[f"hf_generate_vs_generator_{key}"] = bool(out["hf_generate"].equal(out["generator"]))
        pairs = [(n, "sequential") for n in concurrent + ["captured", "captured_overlap"] if n in out]
        pairs += [(n, "generator") for n in ("generator_captured", "hf_generate_compiled") if n in out]
        pairs += [(n, "shared_base") for n in ("captured_shared_base",) if n in out]
        for name, ref in pairs:
            equal[f"{name}_vs_{ref}_{key}"] = bool(out[name].equal(out[ref]))
            if not equal[f"{name}_vs_{ref}_{key}"]:  # bf16 kernels differ: where the greedy tokens part
                first[f"{name}_vs_{ref}_{key}"] = int((out[name] != out[ref]).any(0).long().argmax())
    if concurrent:
        best = min(concurrent, key=ms.get)
        ms["concurrent"], tps["concurrent"] = ms[best], tps[best]
        ratio_b["concurrent"] = ratio_b[best]
    ratios = {"throughput_over_batch1": ratio_b}
    if "hf_generate" in ms:
        ratios["generator_over_hf_generate"] = ms["generator"] / ms["hf_generate"]
    if concurrent:
        ratios["concurrent_over_max_single"] = ms["concurrent"] / max(ms["generator"], ms["reasoner"])
        ratios["concurrent_over_sequential"] = ms["concurrent"] / ms["sequential"]
        if "think_then_generate" in ms:
            ratios["think_then_generate_over_concurrent"] = ms["think_then_generate"] / ms["concurrent"]
    if "captured" in ms and "generator_captured" in ms:  # the "≤ 1.15 × G alone under the same capture"
        ratios["captured_over_generator_captured"] = ms["captured"] / ms["generator_captured"]
    for hf in ("hf_generate_compiled", "hf_generate_all_cores"):
        for name in ("captured", "shared_base", "captured_shared_base"):
            if name in ms and hf in ms:
                ratios[f"{name}_over_{hf}"] = ms[name] / ms[hf]
    for name, alone in (("shared_base", "generator"), ("captured_shared_base", "generator_captured")):
        if name in ms and alone in ms:
            ratios[f"{name}_over_{alone}"] = ms[name] / ms[alone]
    met = {k: ratios[k] <= bound for k, bound in TARGETS.items() if k in ratios}
    met["throughput_over_batch1"] = all(v >= THROUGHPUT_TARGET for v in ratio_b.values())
    return {
        "best_backend": min(concurrent, key=ms.get).removeprefix("concurrent_") if concurrent else None,
        "ms_per_token": ms, "tokens_per_s": tps, "ratios": ratios, "targets": TARGETS, "targets_met": met,
        "tokens_equal": equal, "first_difference": first, "samples_s": times,
    }


def print_table(result: dict, console=None) -> None:
    """The side-by-side table of a ``run_decode_bench`` result."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s, ms, tps = result["settings"], result["ms_per_token"], result["tokens_per_s"]
    single = max(ms["generator"], ms["reasoner"])
    table = Table(title=f"decoding: prompt {s['prompt']} + {s['new']} new tokens, "
                        f"{s['threads_per_model'] or '-'} thread(s) per model, medians of {s['repeats']}")
    b1, bt = s["batch"], s["throughput_batch"]
    table.add_column("decoder", no_wrap=True, min_width=22)
    for col in (f"ms/tok b={b1}", "×max(G,R)", "×seq", f"tok/s b={bt}", f"b{bt}/b{b1}", f"peak MB b={b1}"):
        table.add_column(col, justify="right")
    memory = result.get("memory_bytes", {}).get("latency", {})
    for name in ms:
        peak = memory.get(f"concurrent_{result['best_backend']}" if name == "concurrent" else name)
        table.add_row(name, f"{ms[name]:.2f}", f"{ms[name] / single:.3f}", f"{ms[name] / ms['sequential']:.3f}",
                      f"{tps[name]:.1f}", f"{result['ratios']['throughput_over_batch1'][name]:.2f}",
                      "-" if peak is None else f"{peak / 1e6:.0f}")
    console.print(table)
    equal = result["tokens_equal"]
    differ, first = [k for k, ok in equal.items() if not ok], result.get("first_difference", {})
    console.print(f"same tokens (hf_generate vs generator, concurrent vs sequential): {len(equal) - len(differ)}/"
                  f"{len(equal)}" + (f"; DIFFERENT: {', '.join(f'{k} (from token {first.get(k, 0)})' for k in differ)}"
                                          if differ else ""))
    met = ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in result["targets_met"].items())
    console.print(f"targets met: {met}")
    if result.get("bandwidth"):
        bw, wb = result["bandwidth"], result["weight_bytes"]
        console.print(f"bandwidth bound: (G {wb['generator'] / 1e6:.0f} MB + R {wb['reasoner'] / 1e6:.0f} MB) / "
                      f"{bw['all_threads_gb_s']:.1f} GB/s (measured, all threads; {bw['one_thread_gb_s']:.1f} GB/s "
                      f"one thread) = {result['bandwidth_bound_ms']:.2f} ms per token")
    console.print(f"load average: {result['loadavg_start']} → {result['loadavg_end']}")


def bench_decode_command(
    json_path: Path = typer.Option(None, "--json", help="Write the results as JSON here."),
    batch: int = typer.Option(1, "--batch", help="Batch size for per-token latency."),
    throughput_batch: int = typer.Option(8, "--throughput-batch", help="Batch size for throughput."),
    prompt: int = typer.Option(64, "--prompt", help="Prompt tokens."),
    new: int = typer.Option(None, "--new", help="New tokens per run (EOS never stops a run); 64, --full 128."),
    think_tokens: int = typer.Option(64, "--think-tokens", help="K: reasoning tokens of think-then-generate."),
    repeats: int = typer.Option(None, "--repeats", help="Timed repeats of every configuration (interleaved); 2, --full 3."),
    full: bool = typer.Option(False, "--full", help="Every backend, 128 tokens, 3 repeats, captured rows on a CPU too."),
    hidden: int = typer.Option(512, "--hidden", help="Hidden size of G (and R unless --reasoner-hidden)."),
    layers: int = typer.Option(8, "--layers", help="Layers of G (and R unless --reasoner-layers)."),
    heads: int = typer.Option(8, "--heads", help="Attention heads."),
    kv_heads: int = typer.Option(2, "--kv-heads", help="Key/value heads."),
    intermediate: int = typer.Option(1536, "--intermediate", help="MLP width."),
    vocab: int = typer.Option(32000, "--vocab", help="Vocabulary (tied embeddings)."),
    reasoner_hidden: int = typer.Option(None, "--reasoner-hidden", help="Hidden size of R (≤ G's: prefix fusion)."),
    reasoner_layers: int = typer.Option(None, "--reasoner-layers", help="Layers of R."),
    threads_per_model: int = typer.Option(None, "--threads-per-model", help="Default: half the cores."),
    backends: str = typer.Option("", "--backends", help="Comma-separated concurrent backends (default: all here)."),
    only: str = typer.Option("", "--only", help="Comma-separated configurations to time (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and prompts."),
    generator: Path = typer.Option(None, "--generator", help="A local model folder for G (default: a random model)."),
    reasoner: Path = typer.Option(None, "--reasoner", help="A local model folder for R (default: the generator's)."),
    dtype: BenchDtype = typer.Option(
        "float32", "--dtype", help="Weights dtype."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (the GPU figures: scripts/gpu_bench_decode.py)."),
) -> None:
    """Per-token latency and throughput: G alone, R alone, sequential, concurrent, think-then-generate, HF."""
    cfg = DecodeBenchConfig(
        batch=batch, throughput_batch=throughput_batch, prompt=prompt, new=(128 if full else 64) if new is None else new,
        think_tokens=think_tokens, repeats=(3 if full else 2) if repeats is None else repeats, full=full, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, intermediate=intermediate,
        vocab=vocab, reasoner_hidden=reasoner_hidden, reasoner_layers=reasoner_layers,
        threads_per_model=threads_per_model, backends=[b for b in backends.split(",") if b],
        only=[c for c in only.split(",") if c], seed=seed, generator=str(generator) if generator else None,
        reasoner=str(reasoner) if reasoner else None, dtype=value(dtype),
    )
    from rich.console import Console

    from flythinker.devices import use_device

    console = Console(stderr=True)
    device = use_device(device, say=console.print)
    result = run_decode_bench(cfg, device=str(device), log=console.print)  # a line per timed run: progress
    print_table(result)
    if json_path is not None:
        console.print(f"wrote {write_json(result, json_path)}")
