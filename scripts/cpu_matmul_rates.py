"""How fast this CPU multiplies one token (or a few) by weights that do not fit in cache: the
rate behind `flythinker bench decode`'s batch-1 numbers (see BENCHMARKS.md, decoding at real size).

    python scripts/cpu_matmul_rates.py --threads 1 --json results/bench_decode/cpu_matmul_rates.json

For fp32 and bf16 and M = 1, 2, 8 rows, it times F.linear over 200 SmolLM2-sized MLP matrices
(1536 × 576; 354 MB in bf16, 708 MB in fp32, far beyond the L3 cache) and reports ms per pass and
GB/s of weights read; it also checks whether the first row of an M = 2 product is bitwise the
M = 1 product (whether batching two models' rows through shared weights could stay exact).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def rate(weights, rows: int, dtype, repeats: int = 3) -> float:
    x = torch.randn(rows, weights[0].shape[1]).to(dtype)
    for w in weights:
        F.linear(x, w)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for w in weights:
            F.linear(x, w)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--matrices", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {"threads": args.threads, "shape": [1536, 576], "matrices": args.matrices, "rates": {}, "m1_is_m2_row0": {}}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        weights = [(torch.randn(1536, 576) * 0.02).to(dtype) for _ in range(args.matrices)]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        x = torch.randn(2, 576).to(dtype)
        out["m1_is_m2_row0"][name] = bool(torch.equal(F.linear(x[:1], weights[0]), F.linear(x, weights[0])[:1]))
        for rows in (1, 2, 8):
            s = rate(weights, rows, dtype)
            out["rates"][f"{name}_m{rows}"] = {"ms": 1000 * s, "weight_gb_s": nbytes / s / 1e9}
            print(
                f"{name:9s} M={rows}: {1000 * s:7.1f} ms per pass over {nbytes / 1e6:.0f} MB -> {nbytes / s / 1e9:5.1f} GB/s"
            )
        print(f"{name:9s} row 0 of M=2 bitwise equal to M=1: {out['m1_is_m2_row0'][name]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
