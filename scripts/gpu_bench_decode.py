"""GPU decoding benchmark: Qwen2.5-shaped random pairs in bf16, nothing downloaded (< 10 min).

    python scripts/gpu_bench_decode.py [--pairs 7b+1.5b,3b+3b] [--prompt 64] [--new 128]
                                       [--repeats 3] [--bandwidth GBPS] [--json gpu_decode.json]

For each Generator+Reasoner pair (the paper's 7B + 1.5B, and 3B + 3B) it runs the comparison
of `flythinker bench decode` — G alone, R alone, sequential, concurrent, captured (CUDA graphs,
G alone and FlyThinker), think-then-generate, transformers' generate (eager, and with a static
cache compiled with CUDA graphs) — with each configuration's peak memory, on one GPU with R's steps on a side CUDA stream ("streams"), and,
where a second GPU exists, with R on it ("devices"). Each table comes with the
memory-bandwidth bound of a batch-1 token: every weight a step reads, over the bandwidth
(measured with a large device-to-device copy, or --bandwidth):

    one GPU:   (bytes_G + bytes_R) / bandwidth      two GPUs:   max(bytes_G, bytes_R) / bandwidth

bytes_G = G's decoder layers + LM head; bytes_R = R's decoder layers (R never runs its LM
head; an embedding lookup reads one row). Both models of a pair get the larger vocabulary
(Qwen2.5-7B has 152064 rows, 3B/1.5B 151936: the same tokenizer, padded differently).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# the real Qwen2.5 shapes (config.json of Qwen/Qwen2.5-{7B,3B,1.5B}-Instruct)
SHAPES = {
    "7b": dict(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064, tie=False),
    "3b": dict(hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=2, vocab=151936, tie=True),
    "1.5b": dict(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=151936, tie=True),
}
DEFAULT_PAIRS = "7b+1.5b,3b+3b"


def pair_configs(pair: str):
    """'7b+1.5b' -> (G config, R config), both with the larger of the two vocabularies."""
    from flythinker.tiny import qwen2_config

    try:
        g, r = (SHAPES[name] for name in pair.lower().split("+"))
    except (KeyError, ValueError):
        raise SystemExit(f"unknown pair {pair!r}: use G+R with sizes from {sorted(SHAPES)}, e.g. 7b+1.5b") from None
    vocab = max(g["vocab"], r["vocab"])
    return tuple(qwen2_config(**{**shape, "vocab": vocab}) for shape in (g, r))


def streamed_bytes(causal_lm, lm_head: bool) -> int:
    """Bytes of weights one batch-1 decoding step reads: decoder layers (+ LM head)."""
    from flythinker.lm import backbone

    embedding = causal_lm.get_input_embeddings().weight
    body = sum(p.numel() * p.element_size() for p in backbone(causal_lm).parameters() if p is not embedding)
    head = causal_lm.get_output_embeddings().weight
    return body + (head.numel() * head.element_size() if lm_head else 0)


def bound_ms(model, bandwidth: float, two_devices: bool) -> float:
    """Memory-bandwidth bound of one token (ms) for this pair; ``bandwidth`` in bytes/s."""
    g, r = streamed_bytes(model.generator, lm_head=True), streamed_bytes(model.reasoner, lm_head=False)
    return 1000 * (max(g, r) if two_devices else g + r) / bandwidth


def measure_bandwidth(device, gib: float = 2.0, repeats: int = 10) -> float:
    """Device memory bandwidth (bytes/s) from a large copy: it reads and writes every byte."""
    import torch

    x = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        y.copy_(x)
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / repeats
    del x, y
    torch.cuda.empty_cache()
    return 2 * gib * 2**30 / seconds


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help=f"comma-separated G+R pairs (default {DEFAULT_PAIRS})")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--think-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--throughput-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bandwidth", type=float, default=None, help="GB/s (default: measured)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--only", default="", help="comma-separated configurations to time (default: all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "gpu_bench_decode.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "on CPU run `flythinker bench decode`"
        )
    from flythinker.apps.bench.decode import DecodeBenchConfig, print_table, run_decode_bench
    from flythinker.tiny import random_pair

    bandwidth = args.bandwidth * 1e9 if args.bandwidth else measure_bandwidth("cuda:0")
    print(
        f"{torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}, bandwidth {bandwidth / 1e9:.0f} GB/s"
        f" ({'given' if args.bandwidth else 'measured'})"
    )
    results = {"bandwidth_GBps": bandwidth / 1e9, "gpu": torch.cuda.get_device_name(0), "runs": {}}
    for pair in args.pairs.split(","):
        g_cfg, r_cfg = pair_configs(pair)
        model = random_pair(g_cfg, r_cfg, lam=0.5, device="cuda:0", dtype=torch.bfloat16)
        placements = [("1gpu", "streams", False)]
        if torch.cuda.device_count() > 1:
            placements.append(("2gpu", "devices", True))
        for label, backend, two in placements:
            if two:
                model.reasoner.to("cuda:1")
            cfg = DecodeBenchConfig(
                batch=args.batch,
                throughput_batch=args.throughput_batch,
                prompt=args.prompt,
                new=args.new,
                think_tokens=args.think_tokens,
                repeats=args.repeats,
                backends=[backend],
                hidden=g_cfg.hidden_size,
                layers=g_cfg.num_hidden_layers,
                heads=g_cfg.num_attention_heads,
                kv_heads=g_cfg.num_key_value_heads,
                intermediate=g_cfg.intermediate_size,
                vocab=g_cfg.vocab_size,
                reasoner_hidden=r_cfg.hidden_size,
                reasoner_layers=r_cfg.num_hidden_layers,
                only=[c for c in args.only.split(",") if c] if not two else ["generator", "reasoner", "sequential"],
            )
            result = run_decode_bench(cfg, model=model, device="cuda:0", log=lambda msg: print(msg, flush=True))
            result["bound_ms_per_token"] = bound_ms(model, bandwidth, two)
            ms = result["ms_per_token"]
            over = {
                f"{k}_over_bound": ms[k] / result["bound_ms_per_token"] for k in ("concurrent", "captured") if k in ms
            }
            result.update(over)
            print(
                f"\n{pair} on {label} (R's steps: {backend}); bandwidth bound "
                f"{result['bound_ms_per_token']:.2f} ms/token; "
                + ", ".join(f"{k.removesuffix('_over_bound')} = {v:.2f}× bound" for k, v in over.items())
            )
            print_table(result)
            results["runs"][f"{pair}/{label}"] = result
            if args.json is not None:  # as it goes: a later pair may run out of time
                args.json.write_text(json.dumps(results, indent=2) + "\n")
        del model
        torch.cuda.empty_cache()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
