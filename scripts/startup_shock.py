"""The start-up shock of a pretrained Generator, measured: dev NLL at step 0 and along training.

Runs `flythinker train` on src/flythinker/configs/smollm2_flythinker.yaml (SmolLM2-135M-Instruct
as G and R, LoRA r = 8, gitcommits user_based, dev NLL on 24 dev examples every 10 steps) for SFT,
λ ∈ {0.05, 0.1, 0.25, 0.5} and the opt-in remedies at λ = 0.5 (λ warm-up, R first, a learned gate), one run after the other
(resumable: a finished run is skipped), then writes results/startup_shock/{runs.json,table.md}.

    python scripts/startup_shock.py --model $(flythinker models pull smollm2-135m-instruct)
    python scripts/startup_shock.py --model ... --only sft_40,nonpers_40 --probe   # + the probe on dev
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

CONFIG = "src/flythinker/configs/smollm2_flythinker.yaml"
DATA = "../shared/data/gitcommits/user_based"  # the config's data
K8 = ["data.prompt.k=8", "data.prompt.profile_tokens=1024", "train.max_steps=20"]
RUNS = {  # name -> overrides (the config's λ is 0.5)
    "lam0.5": ["model.lam=0.5"],
    "lam0.1": ["model.lam=0.1"],
    "sft": ["model.mode=sft"],
    "lam0.05": ["model.lam=0.05"],
    "lam0.25": ["model.lam=0.25"],
    "lam0.5_warmup20": ["model.lam=0.5", "model.lam_warmup_steps=20"],
    "lam0.5_rfirst10": ["model.lam=0.5", "model.reasoner_first_steps=10"],
    "lam0.5_gate_scalar": ["model.lam=0.5", "model.gate=scalar"],  # a learned gate, 0 at the start
    "lam0.5_gate_vector": ["model.lam=0.5", "model.gate=vector"],
    # the runs above the gates were measured at train.max_steps=30 (their overrides say so); the
    # gates ran the config's 40 steps, so SFT and λ 0.05 again at 40 for a like-for-like curve
    "sft_40": ["model.mode=sft"],
    "lam0.05_40": ["model.lam=0.05"],
    # issue 29 (b): a longer profile (the 8 newest items in 1,024 tokens), where a separate reader
    # has more to add; 20 steps (a 4-times longer prompt makes each step slower)
    "sft_k8": ["model.mode=sft", *K8],
    "lam0.05_k8": ["model.lam=0.05", *K8],
    "lam0.5_gate_vector_k8": ["model.lam=0.5", "model.gate=vector", *K8],
    # issue 29 (a): is the latent a personalization channel? SFT on the query alone (no profile),
    # against FlyThinker with the profile in R's prompt only (G reads the query alone)
    "nonpers_40": ["model.mode=sft", "data.prompt.retrieval=none"],
    "rprofile_lam0.05_40": ["model.lam=0.05", "data.prompt.profile_in=reasoner"],
    "rprofile_lam0.5_gate_vector_40": ["model.lam=0.5", "model.gate=vector", "data.prompt.profile_in=reasoner"],
    "nonpers_20": ["model.mode=sft", "data.prompt.retrieval=none", "train.max_steps=20"],  # the k8 runs' schedule
    "rprofile_lam0.5_gate_vector_k8": [
        "model.lam=0.5",
        "model.gate=vector",
        "data.prompt.profile_in=reasoner",
        *K8,
    ],
}


def curve(run: Path) -> dict:
    records = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    dev = {r["step"]: r["dev_loss"] for r in records if r.get("kind") in ("eval_step", "eval")}
    train = [r for r in records if r.get("kind") == "train"]
    return {
        "dev_nll": dev,
        "train_loss_first": train[0]["loss"] if train else None,
        "median_step_s": sorted(r["step_time_s"] for r in train)[len(train) // 2] if train else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the pulled SmolLM2 folder")
    p.add_argument("--out", default="runs/startup_shock")
    p.add_argument("--results", default="results/startup_shock")
    p.add_argument("--only", default="", help="comma-separated run names")
    p.add_argument("--set", action="append", default=[], help="extra KEY=VALUE overrides for every run")
    p.add_argument("--probe", action="store_true", help="then probe each run on the whole dev split (probe.md)")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n] or list(RUNS)
    out, res = Path(args.out), Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    for name in names:
        run = out / name
        if not (run / "result.json").is_file():
            cmd = [
                sys.executable,
                "-m",
                "flythinker.cli",
                "train",
                CONFIG,
                f"model.generator.path={args.model}",
                f"model.reasoner.path={args.model}",
                *RUNS[name],
                *args.set,
                "--out",
                str(run),
                "--resume" if run.exists() else "--overwrite",
            ]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        (res / f"{name}.json").write_text(
            json.dumps({"overrides": RUNS[name] + args.set, **curve(run)}, indent=2) + "\n"
        )
        shutil.copyfile(run / "log.jsonl", res / f"{name}.log.jsonl")  # the whole curve, per step
    done = {n: json.loads((res / f"{n}.json").read_text()) for n in RUNS if (res / f"{n}.json").is_file()}
    steps = sorted({int(s) for d in done.values() for s in d["dev_nll"]})
    lines = [
        "| run | " + " | ".join(f"dev NLL @ {s}" for s in steps) + " | first train loss | s/step |",
        "|---|" + "---:|" * (len(steps) + 2),
    ]
    for n, d in done.items():
        cells = [f"{d['dev_nll'][str(s)]:.3f}" if str(s) in d["dev_nll"] else "–" for s in steps]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {d['train_loss_first']:.3f} | {d['median_step_s']:.1f} |")
    (res / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(done, res / "dev_nll.png")
    channel = [n for n in done if n.startswith(("sft_", "nonpers", "rprofile"))]  # issue 29 (a): the profile in R alone
    plot({n: done[n] for n in channel}, res / "profile_in_r.png")
    plot_gates(res, res / "gate.png")
    if args.probe:
        probe(names, out, res)


def probe(names: list[str], out: Path, res: Path) -> None:
    """`flythinker probe --latents` of each run's final model on the whole dev split (its own prompt
    settings): NLL with the user's own profile, none, another user's; for G + R also with its own,
    no, and another example's latents. Writes NAME.probe.json and probe.md."""
    for name in names:
        target = res / f"{name}.probe.json"
        if target.is_file() or not (out / name / "final").is_dir():
            continue
        cmd = [sys.executable, "-m", "flythinker.cli", "probe", "--model", str(out / name / "final"), "--data", DATA]
        cmd += ["--split", "dev", "--limit", "0", "--latents", "--json", str(target)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    lines = [
        "| run | NLL, own profile | none | another user's | own − none [95% CI], own better on "
        "| own − other [95% CI], own better on "
        "| own latents | no latent | another example's | latent offset norm |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in RUNS:
        if not (res / f"{name}.probe.json").is_file():
            continue
        r = json.loads((res / f"{name}.probe.json").read_text())
        nll, paired, lat = r["nll"], r["paired"], r.get("latents")

        def diff(key):
            d = paired.get(key)
            if not d:
                return "–"
            return f"{d['diff']:+.4f} [{d['ci']['low']:+.4f}, {d['ci']['high']:+.4f}], {d['win_rate']:.0%}"

        cells = [f"{nll['own']:.4f}", f"{nll['none']:.4f}", f"{nll.get('other', float('nan')):.4f}"]
        cells += [diff("own-none"), diff("own-other")]
        keys = ("nll_own", "nll_no_latent", "nll_other_latent", "offset_norm")
        cells += [f"{lat[k]:.4f}" for k in keys] if lat and lat["lam"] != 0 else ["–"] * 4  # λ = 0: no latent
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (res / "probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(done: dict, path: Path) -> None:
    """Dev NLL against optimizer steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (full, zoom) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.get_cmap("tab20").colors  # one color per run (the default cycle repeats after 10)
    for i, (name, d) in enumerate(done.items()):
        steps = sorted(int(s) for s in d["dev_nll"])
        values = [d["dev_nll"][str(s)] for s in steps]
        dashed = name.endswith(("_k8", "_20"))  # the 20-step runs (k = 8, and their query-only SFT)
        style = dict(
            marker="o",
            lw=2 if name in ("sft", "sft_40") else 1.2,
            ls="--" if dashed else "-",
            color="black" if name in ("sft", "sft_40") else colors[i % len(colors)],
        )
        full.plot(steps, values, label=name, **style)
        zoom.plot(steps, values, label=name, **style)
    full.set(title="dev NLL while fine-tuning (SmolLM2-135M, LoRA r=8)", xlabel="optimizer step", ylabel="nats/token")
    zoom.set(title="the same, near SFT (dashed: 20-step runs, 8 items)", xlabel="optimizer step", ylim=(3.22, 3.75))
    full.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gates(res: Path, path: Path) -> None:
    """The learned gate's value per optimizer step (runs with model.gate), from their per-step logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = sorted(res.glob("*gate*.log.jsonl"))
    if not logs:
        return
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for log in logs:
        rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r.get("kind") == "train" and "gate" in r]
        name = log.name.removesuffix(".log.jsonl")
        ax.plot([r["step"] for r in rows], [r["gate"] for r in rows], label=f"{name}: mean g")
        if any("gate_rms" in r for r in rows):
            ax.plot([r["step"] for r in rows], [r["gate_rms"] for r in rows], ls="--", label=f"{name}: RMS g")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(title="the learned gate g (offset λ·g·ρ·ẑ; λ = 0.5)", xlabel="optimizer step", ylabel="g")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
