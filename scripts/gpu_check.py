"""The GPU check: one command on a machine with a CUDA GPU and no network (see gpu_check.sh).

    python scripts/gpu_check.py --out gpu_check/ [--budget 460] [--model DIR]

Steps, each a subprocess with its own time limit inside the whole budget (default 460 s), each
recorded in OUT/gpu_check.json as soon as it ends (rc, seconds, the last lines it printed):

1. ``pytest -m gpu``: the invariant tests on ``cuda`` (bf16 and the ``streams`` backend included);
2. 40 bf16 steps of full fine-tuning with the default attention on a padded batch stream (batch
   16 of gitcommits examples of unequal length), SFT and FlyThinker; every logged gradient norm
   must be finite;
3. ``flythinker experiment`` on a 2-cell smoke matrix (sft and flythinker, one split, one seed);
4. ``scripts/gpu_bench_decode.py`` (7B + 1.5B, then 3B + 3B random Qwen2.5 shapes, bf16; each pair
   its own process with half of what is left, the captured and shared-base rows included).

Nothing is downloaded: the model is ``--model`` / ``$FLYTHINKER_MODEL`` (e.g. the SmolLM2 folder of
``flythinker models pull``) or, without one, random weights of SmolLM2-135M's shape. ``--allow-cpu``
runs the same plumbing on a CPU at toy sizes (to test this script where there is no GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gitcommits"
# SmolLM2-135M's shape (config.json of HuggingFaceTB/SmolLM2-135M-Instruct), random weights
SMOLLM2_SHAPE = {"hidden_size": 576, "num_layers": 30, "num_heads": 9, "num_kv_heads": 3, "max_positions": 2048}
# the captured and shared-base rows beside transformers' compiled generate (G alone, R alone,
# sequential and concurrent always run): what the decoding issue's GPU targets compare
BENCH_ROWS = "generator_captured,captured,hf_generate_compiled,shared_base,captured_shared_base"
STEPS = ("pytest_gpu", "train", "experiment", "bench")
TOY_SHAPE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "max_positions": 1024}


def run_step(name: str, cmd: list[str], limit: float, report: dict, out: Path, env=None) -> dict:
    """Run one step under ``limit`` seconds; record it in the report (written at once)."""
    t0 = time.perf_counter()
    print(f"== {name}: {' '.join(cmd)} (limit {limit:.0f} s)", flush=True)
    log = out / f"{name}.log"
    try:
        with log.open("w") as f:
            rc = subprocess.run(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=max(limit, 1),
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            ).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    lines = log.read_text(errors="replace").splitlines()
    step = {"cmd": cmd, "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": lines[-15:]}
    report["steps"][name] = step
    write(report, out)
    print(f"   rc {rc} in {step['seconds']} s", flush=True)
    return step


def write(report: dict, out: Path) -> None:
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out / "gpu_check.json")


def train_config(out: Path, mode: str, model: str | None, toy: bool) -> Path:
    """A `flythinker train` YAML: 40 steps of batch 16, bf16, full fine-tuning, default attention."""
    import yaml

    spec = {"path": model} if model else {"tiny": TOY_SHAPE if toy else SMOLLM2_SHAPE}
    cfg = {
        "model": {
            "mode": mode,
            "lam": 0.05,
            "generator": dict(spec),
            "reasoner": dict(spec),
            **({} if model else {"tokenizer": "train", "tokenizer_vocab_size": 2000}),
        },
        "data": {
            "path": str(DATA / "user_based"),
            "limit_train": 40 * 16,
            "limit_dev": 32,
            "prompt": {"retrieval": "recent", "k": 2, "profile_tokens": 256, "query_tokens": 64, "target_tokens": 256},
        },
        "train": {
            "max_steps": 4 if toy else 40,
            "batch_size": 4 if toy else 16,
            "lr": 5.0e-5,
            "warmup_steps": 10,
            "schedule": "cosine",
            "precision": "bf16",
            "log_every": 1,
            "save_every": 0,
        },
    }
    path = out / f"train_{mode}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def grad_norms(run: Path) -> list[float]:
    records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [r["grad_norm"] for r in records if r.get("grad_norm") is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check")))
    ap.add_argument("--budget", type=float, default=460.0, help="seconds for all steps (default 460)")
    ap.add_argument("--model", default=os.environ.get("FLYTHINKER_MODEL"), help="a local causal-LM folder")
    ap.add_argument("--allow-cpu", action="store_true", help="no GPU: the same plumbing at toy sizes")
    ap.add_argument("--pairs", default="7b+1.5b,3b+3b", help="decoding benchmark pairs, one process each")
    ap.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated parts to run (default all: {','.join(STEPS)}); the GPU queue runs one a task",
    )
    args = ap.parse_args()
    parts = set(args.steps.split(","))
    if parts - set(STEPS):
        raise SystemExit(f"gpu_check: unknown steps {sorted(parts - set(STEPS))}; known: {', '.join(STEPS)}")
    import torch

    gpu = torch.cuda.is_available()
    if not gpu and not args.allow_cpu:
        raise SystemExit("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); --allow-cpu to test it")
    toy = not gpu
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu (--allow-cpu: toy sizes)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model": args.model or "random weights",
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "steps": {},
    }
    write(report, out)
    py, cli = sys.executable, [sys.executable, "-m", "flythinker.cli"]
    whole = len(parts) == len(STEPS)  # a part run alone gets all that is left
    left = lambda share, alone=1.0: (share if whole else alone) * (args.budget - (time.perf_counter() - start))  # noqa: E731

    if "pytest_gpu" in parts:
        run_step(
            "pytest_gpu",
            [
                py,
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu" if gpu else "gpu or not gpu",
                "-p",
                "no:cacheprovider",
                *([] if gpu else ["tests/test_model.py", "-k", "lambda_zero"]),
            ],
            left(0.3),
            report,
            out,
        )
    if "train" in parts:
        for mode in ("sft", "flythinker"):
            run = out / f"train_{mode}"
            step = run_step(
                f"train_{mode}",
                [*cli, "train", str(train_config(out, mode, args.model, toy)), "--out", str(run), "--overwrite"],
                left(0.25, alone=0.5 if mode == "sft" else 1.0),
                report,
                out,
            )
            if (run / "log.jsonl").is_file():
                norms = grad_norms(run)
                step["grad_norms"] = {
                    "n": len(norms),
                    "finite": all(math.isfinite(x) for x in norms),
                    "max": max(norms, default=None),
                }
                write(report, out)
    if "experiment" in parts:
        exp_sets = [
            "methods=[sft,flythinker]",
            "ablations=[]",
            "splits=[user_based]",
            "seeds=[0]",
            f"out={out / 'experiment'}",
            f"bertscore={'true' if importlib.util.find_spec('bert_score') else 'false'}",  # the GPU image has none
            "probe=true",
        ]
        if args.model:
            exp_sets.append(f"bases={{g: {{path: {args.model}}}, r: {{path: {args.model}}}}}")
        run_step(
            "experiment",
            [
                *cli,
                "experiment",
                "src/flythinker/configs/experiment_tiny.yaml",
                *[x for s in exp_sets for x in ("--set", s)],
            ],
            left(0.4),
            report,
            out,
        )
    if (
        gpu and "bench" in parts
    ):  # one process per pair, each with its share of what is left (a slow pair cannot starve the next)
        pairs = args.pairs.split(",")
        for k, pair in enumerate(pairs):
            path = out / f"gpu_bench_decode_{pair.replace('+', '_')}.json"
            run_step(
                f"bench_decode_{pair}",
                [
                    py,
                    "scripts/gpu_bench_decode.py",
                    "--pairs",
                    pair,
                    "--new",
                    "64",
                    "--repeats",
                    "2",
                    "--only",
                    BENCH_ROWS,
                    "--json",
                    str(path),
                ],
                left(0.95 / (len(pairs) - k)),
                report,
                out,
            )
            if path.is_file():
                report.setdefault("bench_decode", {})[pair] = json.loads(path.read_text())
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = all(s["rc"] == 0 for s in report["steps"].values()) and all(
        s.get("grad_norms", {}).get("finite", True) for s in report["steps"].values()
    )
    write(report, out)
    print(f"gpu_check: {'OK' if report['ok'] else 'FAILED'} in {report['seconds']} s; report {out / 'gpu_check.json'}")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
