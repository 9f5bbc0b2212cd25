"""Diagnose CapturedDecoder(overlap=True) on a GPU: R on a second stream inside the recorded step.

Its one H200 run ended in an illegal memory access; the option is withdrawn until it is fixed. This
script builds it anyway (FLYTHINKER_UNSAFE_OVERLAP=1) and runs, each in its own process under its
own limit, writing ``OUT/overlap.json`` as each ends:

1. ``plain``: the overlap decoder against the reference decoder (greedy tokens), random pairs of
   growing size (tiny, then 0.5B-wide), batch 1 and 4;
2. ``blocking``: the same with ``CUDA_LAUNCH_BLOCKING=1`` (an illegal access is then reported at the
   kernel that made it, in the traceback);
3. ``sanitizer``: the tiny pair under ``compute-sanitizer --tool memcheck`` (where the image has it).

    python scripts/gpu_overlap.py --out OUT [--budget 200] [--allow-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"tiny": dict(hidden=64, layers=2, heads=4, kv=2), "mid": dict(hidden=896, layers=8, heads=14, kv=2)}


def check(size: str, device: str) -> dict:
    """One size: tokens of the overlap decoder against the reference, batch 1 and 4."""
    import torch

    from flythinker.decoding.captured import CapturedDecoder
    from flythinker.tiny import qwen2_config, random_pair

    s = SIZES[size]
    cfg = qwen2_config(s["hidden"], s["layers"], s["heads"], s["kv"], None, 512, attn="sdpa")
    model = random_pair(cfg, cfg, lam=0.5, device=device, dtype=torch.bfloat16 if device == "cuda" else None)
    out = {}
    for batch in (1, 4):
        ids = torch.randint(3, 500, (batch, 12), device=device)
        mask = torch.ones_like(ids)
        mask[1:, :3] = 0
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=24, eos_token_id=[], pad_token_id=0)
        new = CapturedDecoder(model, overlap=True).generate(
            ids, mask, max_new_tokens=24, eos_token_id=[], pad_token_id=0
        )
        if device == "cuda":
            torch.cuda.synchronize()
        same = bool(torch.equal(ref, new))
        out[f"batch{batch}"] = {
            "equal": same,
            "first_difference": None if same else int((ref != new).any(0).float().argmax()),
        }
    return out


def child(args) -> None:
    os.environ["FLYTHINKER_UNSAFE_OVERLAP"] = "1"
    device = "cuda" if not args.allow_cpu else "cpu"
    result = {}
    for size in args.sizes.split(","):
        result[size] = check(size, device)
        print(json.dumps({size: result[size]}), flush=True)
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_overlap")))
    p.add_argument("--budget", type=float, default=200)
    p.add_argument("--allow-cpu", action="store_true", help="the plumbing on a CPU (no graphs: no overlap)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="tiny,mid")
    args = p.parse_args()
    if args.child:
        return child(args)
    args.out.mkdir(parents=True, exist_ok=True)
    report, start = {"steps": {}}, time.monotonic()
    me = [sys.executable, __file__, "--child"] + (["--allow-cpu"] if args.allow_cpu else [])
    steps = [
        ("plain", [*me, "--sizes", args.sizes], {}),
        ("blocking", [*me, "--sizes", args.sizes], {"CUDA_LAUNCH_BLOCKING": "1"}),
    ]
    if shutil.which("compute-sanitizer") and not args.allow_cpu:
        steps.append(("sanitizer", ["compute-sanitizer", "--tool", "memcheck", *me, "--sizes", "tiny"], {}))
    for k, (name, cmd, env) in enumerate(steps):
        limit = (args.budget - (time.monotonic() - start)) / (len(steps) - k)
        t0 = time.monotonic()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(limit, 1), env={**os.environ, **env})
            rc, text = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            rc, text = (
                "timeout",
                (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace"),
            )
        lines = text.splitlines()
        result = next((json.loads(x[7:]) for x in lines if x.startswith("RESULT ")), None)
        report["steps"][name] = {
            "rc": rc,
            "seconds": round(time.monotonic() - t0, 1),
            "result": result,
            "tail": lines[-40:],
        }
        (args.out / "overlap.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"{name}: rc {rc}, {result}", flush=True)
    ok = all(
        s["rc"] == 0 and s["result"] and all(v["equal"] for r in s["result"].values() for v in r.values())
        for s in report["steps"].values()
    )
    print("overlap: " + ("tokens equal the reference in every step" if ok else "FAILED (see overlap.json)"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
