"""`flythinker bench train`: one training step of SFT(G), SFT(R) and FlyThinker(G+R), side by side.

The paper's claim (docs/design.md#the-method-and-ρ): a FlyThinker step costs about SFT(G) + SFT(R), since R runs
once in parallel over the sequence — and a little less, since R's LM head is never run.
Same random data, same batch, same architecture (two tiny Qwen2s, ≈8M parameters each by
default). A step is forward + backward + AdamW step, exactly what the trainer does per
optimizer step without accumulation.

* step time: median of ``repeats`` timed steps per configuration, interleaved (the order
  rotates every round) so that machine noise hits all three alike, after ``warmup`` steps;
* peak memory: on CPU, the growth of the peak resident set (VmHWM / ``ru_maxrss``) in a fresh process
  per configuration (weights + gradients + AdamW state + activations; tracemalloc does not
  see torch's allocations); on GPU, ``torch.cuda.max_memory_allocated``.

    >>> result = run_bench(BenchConfig(repeats=5))  # doctest: +SKIP
    >>> result["step_s"]["flythinker"] <= 1.05 * (result["step_s"]["sft_generator"] + result["step_s"]["sft_reasoner"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from flythinker.apps import write_json
from flythinker.apps.bench.machine import loadavg

CONFIGS = ("sft_generator", "sft_reasoner", "flythinker")
TARGET = 1.05  # FlyThinker step ≤ TARGET × (SFT(G) step + SFT(R) step)


@dataclass
class BenchConfig:
    """Sizes of the benchmark (both models share them)."""

    hidden: int = 256
    layers: int = 6
    vocab: int = 4096
    batch_size: int = 4
    seq_len: int = 256
    repeats: int = 10
    warmup: int = 2
    memory: bool = True
    device: str | None = None
    threads: int | None = None
    seed: int = 0


def _device(cfg: BenchConfig) -> str:
    import torch

    return cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _lm(cfg: BenchConfig, seed: int):
    from flythinker.tiny import qwen2_config, random_lm

    qcfg = qwen2_config(
        cfg.hidden,
        cfg.layers,
        max(1, cfg.hidden // 64),
        max(1, cfg.hidden // 128),
        None,
        cfg.vocab,
        tie=False,
        max_positions=max(512, cfg.seq_len),
        eos=1,
        pad=0,
    )
    return random_lm(qcfg, seed)


def make_configuration(name: str, cfg: BenchConfig):
    """(model, optimizer) for one configuration, set up as the trainer sets it up."""
    import torch

    from flythinker.model import FlyThinker
    from flythinker.train.assemble import SFTModel, prepare_for_training
    from flythinker.train.config import ModelConfig

    g, r = _lm(cfg, cfg.seed), _lm(cfg, cfg.seed + 1)
    if name == "sft_generator":
        model = SFTModel(g)
    elif name == "sft_reasoner":
        model = SFTModel(r)  # R trained alone as an ordinary LM: with its LM head
    else:
        model = FlyThinker(g, r, lam=0.5)
        prepare_for_training(model, ModelConfig(mode="flythinker"), gradient_checkpointing=False)
    model = model.to(_device(cfg)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def make_batch(cfg: BenchConfig) -> dict:
    """Random tokens (B, T); the loss covers the second half (the "response")."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(2, cfg.vocab, (cfg.batch_size, cfg.seq_len), generator=gen)  # (B, T)
    labels = ids.clone()
    labels[:, : cfg.seq_len // 2] = -100
    dev = _device(cfg)
    return {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev), "labels": labels.to(dev)}


def train_step(model, opt, batch) -> float:
    """Forward + backward + optimizer step; returns the loss."""
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()  # .item() also waits for the GPU


def time_steps(cfg: BenchConfig) -> dict[str, list[float]]:
    """Seconds per step of every configuration, ``repeats`` each, interleaved."""
    batch = make_batch(cfg)
    setups = {name: make_configuration(name, cfg) for name in CONFIGS}
    for name, (model, opt) in setups.items():
        for _ in range(cfg.warmup):
            train_step(model, opt, batch)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for i in range(cfg.repeats):
        order = CONFIGS[i % 3 :] + CONFIGS[: i % 3]  # rotate: no configuration always runs first
        for name in order:
            model, opt = setups[name]
            t0 = time.perf_counter()
            train_step(model, opt, batch)
            times[name].append(time.perf_counter() - t0)
    return times


def _peak_rss_bytes() -> int:
    """Peak resident set of this process image. Linux: VmHWM, which exec resets (ru_maxrss
    does not: a child would inherit its parent's peak); elsewhere ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_memory(name: str, cfg: BenchConfig) -> int:
    """Peak memory (bytes) of training ``name``, in this process (call it in a fresh one on CPU)."""
    import torch

    if _device(cfg).startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model, opt = make_configuration(name, cfg)
        batch = make_batch(cfg)
        for _ in range(cfg.warmup + 2):
            train_step(model, opt, batch)
        peak = torch.cuda.max_memory_allocated() - base
        del model, opt
        return peak
    base = _peak_rss_bytes()  # torch + transformers imported, nothing built yet
    model, opt = make_configuration(name, cfg)
    batch = make_batch(cfg)
    for _ in range(cfg.warmup + 2):
        train_step(model, opt, batch)
    return _peak_rss_bytes() - base


def _memory_in_fresh_process(name: str, cfg: BenchConfig) -> int:
    cmd = [sys.executable, "-m", "flythinker.apps.bench.train", name, json.dumps(asdict(cfg))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def run_bench(cfg: BenchConfig) -> dict:
    """Time and measure the three configurations; returns the JSON-able result."""
    import torch

    from flythinker.train.assemble import count_parameters

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg)
    params = {}
    for name in CONFIGS:
        model, _ = make_configuration(name, cfg)
        params[name] = dict(zip(("trainable", "total"), count_parameters(model)))
        del model
    times = time_steps(cfg)
    step_s = {name: statistics.median(ts) for name, ts in times.items()}
    memory = None
    if cfg.memory:
        if device.startswith("cuda"):
            memory = {name: measure_memory(name, cfg) for name in CONFIGS}
        else:
            memory = {name: _memory_in_fresh_process(name, cfg) for name in CONFIGS}
    ratio = step_s["flythinker"] / (step_s["sft_generator"] + step_s["sft_reasoner"])
    return {
        "config": asdict(cfg),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "parameters": params,
        "step_s": step_s,
        "step_s_all": times,
        "peak_memory_bytes": memory,
        "memory_method": None
        if memory is None
        else (
            "cuda.max_memory_allocated"
            if device.startswith("cuda")
            else "peak RSS growth (VmHWM), fresh process per config"
        ),
        "flythinker_over_sum": ratio,
        "target": TARGET,
        "meets_target": ratio <= TARGET,
        "loadavg": loadavg(),
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = result["config"]
    table = Table(
        title=f"training step, {result['device']}: batch {cfg['batch_size']} × {cfg['seq_len']} tokens, "
        f"hidden {cfg['hidden']}, {cfg['layers']} layers, vocab {cfg['vocab']}"
    )
    for col in ("configuration", "trainable params", "step (median)", "min", "max", "peak memory"):
        table.add_column(col, justify="left" if col == "configuration" else "right", no_wrap=True)
    mem = result["peak_memory_bytes"] or {}
    for name in CONFIGS:
        ts = result["step_s_all"][name]
        table.add_row(
            name,
            f"{result['parameters'][name]['trainable'] / 1e6:.2f}M",
            f"{result['step_s'][name] * 1e3:.1f} ms",
            f"{min(ts) * 1e3:.1f}",
            f"{max(ts) * 1e3:.1f}",
            f"{mem[name] / 2**20:.0f} MiB" if name in mem else "-",
        )
    console = Console()
    console.print(table)
    verdict = "meets" if result["meets_target"] else "MISSES"
    console.print(
        f"FlyThinker / (SFT(G) + SFT(R)) = {result['flythinker_over_sum']:.3f} ({verdict} the ≤ {TARGET} target); "
        f"{cfg['repeats']} interleaved repeats, {result['torch_threads']} torch threads, "
        f"loadavg {result['loadavg']}"
    )


def bench_train_command(
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")] = None,
    hidden: Annotated[int, typer.Option(help="Hidden size of G and R.")] = 256,
    layers: Annotated[int, typer.Option(help="Decoder layers of G and R.")] = 6,
    vocab: Annotated[int, typer.Option(help="Vocabulary size.")] = 4096,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence (half prompt, half response).")] = 256,
    repeats: Annotated[int, typer.Option(help="Timed steps per configuration (interleaved).")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed steps per configuration first.")] = 2,
    memory: Annotated[
        bool, typer.Option(help="Measure peak memory (one fresh process per configuration on CPU).")
    ] = True,
    device: Annotated[
        Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: the GPU when there is one).")
    ] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Step time and peak memory of SFT(G), SFT(R) and FlyThinker(G+R), same data and batch."""
    from flythinker.devices import use_device

    device = str(use_device(device))
    cfg = BenchConfig(
        hidden=hidden,
        layers=layers,
        vocab=vocab,
        batch_size=batch_size,
        seq_len=seq_len,
        repeats=repeats,
        warmup=warmup,
        memory=memory,
        device=device,
        threads=threads,
    )
    result = run_bench(cfg)
    print_table(result)
    if json_path is not None:
        write_json(result, json_path)
        print(f"wrote {json_path}")


if __name__ == "__main__":  # child process of the CPU memory measurement: NAME CONFIG_JSON
    import torch
    import transformers  # noqa: F401  (imported before the baseline is read)

    _cfg = BenchConfig(**json.loads(sys.argv[2]))
    if _cfg.threads:
        torch.set_num_threads(_cfg.threads)
    print(measure_memory(sys.argv[1], _cfg))
