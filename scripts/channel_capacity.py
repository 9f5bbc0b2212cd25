"""Can the latent carry anything? A code word that only R reads, learned through the channel.

Every author of gitcommits ``user_based`` gets a random code word (two words from a list of 64,
a few tokens), and every target begins with it. FlyThinker runs put the code only in R's prompt
(``profile_in: reasoner``: G reads the query alone), so G can write the code only if R's latent
tells it. Dev authors are unseen in training: the code cannot be memorised, only carried.

* ceiling: SFT with the code in G's prompt (G copies it);
* floor: SFT without it (G can only guess);
* FlyThinker rows: λ 0.05 / 0.5, ‖z‖ detached or not, the gates, linear fusion, LoRA or full
  fine-tuning, and remedies beyond the paper.

Every ``--eval-every`` optimizer steps each run measures, on the first ``--dev`` dev examples, the
code tokens' teacher-forced NLL (nats per example, summed over the code's tokens) and the exact-
match rate of the greedily generated code; ``report`` turns them into the fraction of the
floor-to-ceiling gap closed and a plot. One run after the other, resumable (a finished run's
``NAME.json`` is kept and skipped)::

    M=$(flythinker models pull smollm2-135m-instruct)
    python scripts/channel_capacity.py --model $M                       # every run
    python scripts/channel_capacity.py --model $M --only floor,ceiling,lam0.5
    python scripts/channel_capacity.py --report                         # table.md + gap.png only
    python scripts/channel_capacity.py --model $M --diagnose lam0.5     # why: NAME.diagnosis.json
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import time
from pathlib import Path

DATA = "../shared/data/gitcommits/user_based"
WORDS = (
    "amber anchor apple arrow basil beacon birch bishop cactus canyon cedar cobalt comet copper coral "
    "cotton crystal dagger delta desert ember falcon fern forest garnet glacier granite harbor hazel "
    "island ivory jasper kettle lantern lemon marble meadow mirror nickel oasis olive onyx orchid pebble "
    "pepper pilot prism quartz raven ribbon river saddle salmon signal silver spruce thunder timber "
    "velvet walnut willow tiger maple zebra"
).split()
assert len(WORDS) == 64
PROMPT = {"retrieval": "all", "profile_tokens": 32, "query_tokens": 32, "target_tokens": 16, "use_chat_template": False}
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}
R_PROFILE = ["data.prompt.profile_in=reasoner"]
FULL = ["model.generator.lora=null", "model.reasoner.lora=null", "train.lr=5e-5"]  # full fine-tuning
RUNS = {  # name -> overrides of base_config(), in the order they run; FlyThinker puts the code in R's prompt alone
    "floor": ["model.mode=sft", "data.prompt.retrieval=none"],
    "ceiling": ["model.mode=sft"],
    "lam0.5": ["model.lam=0.5", *R_PROFILE],
    "lam0.05": ["model.lam=0.05", *R_PROFILE],
    "lam0.5_detach": ["model.lam=0.5", "model.detach_latent_norm=true", *R_PROFILE],
    "lam0.5_gate_vector": ["model.lam=0.5", "model.gate=vector", *R_PROFILE],
    "lam0.5_linear": ["model.lam=0.5", "model.fusion=linear", *R_PROFILE],
    "full_floor": ["model.mode=sft", "data.prompt.retrieval=none", *FULL],
    "full_ceiling": ["model.mode=sft", *FULL],
    "full_lam0.5": ["model.lam=0.5", *FULL, *R_PROFILE],
    # beyond the paper: the centred latent λ·ρ·(z−μ)/‖z−μ‖ (model.center_latent)
    "lam0.5_centred": ["model.lam=0.5", "model.center_latent=true", *R_PROFILE],
    "lam0.5_gate_scalar": ["model.lam=0.5", "model.gate=scalar", *R_PROFILE],
    "lam0.05_detach": ["model.lam=0.05", "model.detach_latent_norm=true", *R_PROFILE],
    # beyond the paper: the standardised latent λ·ρ·u/‖u‖, u = (z−μ)/σ (model.standardize_latent)
    "lam0.5_standardised": ["model.lam=0.5", "model.standardize_latent=true", *R_PROFILE],
}


def code_for(user_id: str, n_words: int = 2) -> str:
    """The author's code word: ``n_words`` of :data:`WORDS`, drawn from a hash of the author's id."""
    rng = random.Random(int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big"))
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def coded(examples):
    """The task: each example's profile is its author's code alone; its target begins with it."""
    from flythinker.data.longlamp import Example

    out = []
    for ex in examples:
        code = code_for(ex.user_id or ex.id)
        out.append(
            Example(
                id=ex.id,
                user_id=ex.user_id,
                input=ex.input,
                output=f"{code}\n{ex.output}",
                profile=[{"title": "Code word", "text": code}],
                task=ex.task,
            )
        )
    return out


def base_config(model: str, steps: int, eval_every: int) -> dict:
    return {
        "model": {
            "mode": "flythinker",
            "lam": 0.5,
            "fusion": "prefix",
            "generator": {"path": model, "dtype": "float32", "lora": LORA},
            "reasoner": {"path": model, "dtype": "float32", "lora": LORA},
        },
        "data": {"path": DATA, "prompt": PROMPT},
        "train": {
            "max_steps": steps,
            "batch_size": 8,
            "lr": 2.0e-4,
            "warmup_steps": 10,
            "schedule": "cosine",
            "min_lr_ratio": 0.1,
            "max_grad_norm": 1.0,
            "precision": "bf16",
            "seed": 0,
            "eval": False,
            "eval_every": eval_every,
            "save_every": 0,
            "keep_last": 1,
            "log_every": 5,
        },
    }


def make_trainer_class():
    import torch

    from flythinker.train.trainer import Trainer

    class CapacityTrainer(Trainer):
        """The recipe's trainer, measuring the code at each ``eval_every`` step and at the end."""

        code_dev: list = []
        records: list = []

        def _evaluate_step(self):
            self._measure_code()

        def _finish(self):
            self._measure_code()
            return super()._finish()

        @torch.no_grad()
        def _measure_code(self):
            model = self.acc.unwrap_model(self.model)
            was = model.training
            model.eval()
            with self.acc.autocast():
                nll, n_tok, exact, samples = code_metrics(model, self.tokenizer, self.code_dev, self.prompt_cfg)
            model.train(was)
            rec = {
                "step": self.step,
                "code_nll": nll,
                "code_tokens": n_tok,
                "exact": exact,
                "sample": samples[0],
                "time": time.time(),
            }
            self.records.append(rec)
            from tqdm.auto import tqdm

            tqdm.write(f"step {self.step}: code NLL {nll:.3f} nats, exact {exact:.3f}  e.g. {samples[0]!r}")

    return CapacityTrainer


def code_metrics(model, tokenizer, examples, prompt_cfg, batch_size: int = 16):
    """(mean code NLL per example, mean code tokens, exact-match rate, first generations)."""
    import torch

    from flythinker.data.collate import TEACHER_FORCED_PADDING, collate
    from flythinker.data.prompts import encode_for_training, generation_batch
    from flythinker.evaluate.nll import placement
    from flythinker.lm import pad_id
    from flythinker.train.evalgen import greedy_new_tokens

    pad, device = pad_id(tokenizer), next(model.parameters()).device
    nlls, counts, hits, samples = [], [], [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        codes = [ex.output.split("\n", 1)[0] for ex in chunk]
        n_code = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in codes]
        feats = [encode_for_training(ex, tokenizer, prompt_cfg) for ex in chunk]
        batch = {k: v.to(device) for k, v in collate(feats, pad, TEACHER_FORCED_PADDING).items()}
        labels = batch["labels"]
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **placement(model, batch)
        ).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        for b, n in enumerate(n_code):
            first = int((labels[b] != -100).nonzero()[0])  # the first target token: the code's first
            target = labels[b, first : first + n]
            assert tokenizer.decode(target) == codes[b], (tokenizer.decode(target), codes[b])
            nlls.append(-logp[b, first - 1 : first - 1 + n].gather(-1, target[:, None]).sum().item())
            counts.append(n)
        gen = {k: v.to(device) for k, v in generation_batch(chunk, tokenizer, prompt_cfg, pad).items()}
        ids, mask = gen.pop("input_ids"), gen.pop("attention_mask")
        new = greedy_new_tokens(model, tokenizer, ids, mask, max(n_code) + 2, **gen)
        for b, code in enumerate(codes):
            text = tokenizer.decode(new[b], skip_special_tokens=True)
            hits.append(text.strip().split("\n", 1)[0].strip() == code)
            samples.append(text)
    n = max(len(nlls), 1)
    return sum(nlls) / n, sum(counts) / n, sum(hits) / n, samples


def first_code_latents(reasoner, tokenizer, examples, batch_size: int = 16):
    """R's latent at its last prompt token (what G adds at the code's first token) (N, d_R), and the
    index of each example's first code word in WORDS (N,)."""
    import torch

    from flythinker.data.prompts import PromptConfig, generation_batch
    from flythinker.lm import backbone, pad_id, positions_from_mask

    cfg = PromptConfig(**PROMPT, profile_in="reasoner")
    net, zs = backbone(reasoner), []
    for i in range(0, len(examples), batch_size):
        b = generation_batch(examples[i : i + batch_size], tokenizer, cfg, pad_id(tokenizer))
        ids, mask = b["reasoner_input_ids"], b["reasoner_attention_mask"]  # left-padded: the last column is real
        out = net(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False)
        zs.append(out.last_hidden_state[:, -1].float())
    labels = torch.tensor([WORDS.index(ex.output.split()[0]) for ex in examples])
    return torch.cat(zs), labels


def linear_probe(train_z, train_y, dev_z, dev_y, steps: int = 400) -> float:
    """Dev accuracy of a softmax classifier of the unit latent z/‖z‖ (64 classes; chance 1/64)."""
    import torch

    torch.manual_seed(0)
    unit = lambda z: z / z.norm(dim=-1, keepdim=True)  # noqa: E731  (what the norm-matching keeps)
    x, xd = unit(train_z), unit(dev_z)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)  # standardised, so the constant direction cannot hide the rest
    x, xd = (x - mu) / sd, (xd - mu) / sd
    w = torch.zeros(x.shape[1], len(WORDS), requires_grad=True)
    opt = torch.optim.Adam([w], lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(x @ w, train_y).backward()
        opt.step()
    return float(((xd @ w).argmax(-1) == dev_y).float().mean())


def diagnose(name: str, args) -> dict:
    """Why the channel carries what it does: the constant share of z/‖z‖ at the code's first token,
    whether a linear probe reads the code word from R's latent (trained R and untrained R), and the
    gradient that reaches R against G's on one training batch."""
    import torch

    from flythinker.auto import load_model
    from flythinker.data.collate import TEACHER_FORCED_PADDING, collate
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig, encode_for_training
    from flythinker.lm import pad_id
    from flythinker.loading import load_causal_lm

    model, tok = load_model(Path(args.out) / name / "final")
    train = coded(load_examples(DATA, split="train"))
    dev = coded(load_examples(DATA, split="dev"))[: args.dev]
    out = {"name": name}
    base = load_causal_lm(args.model, "model.reasoner").eval()
    for label, reasoner in (("trained_r", model.reasoner), ("untrained_r", base)):
        with torch.no_grad():
            tz, ty = first_code_latents(reasoner, tok, train)
            dz, dy = first_code_latents(reasoner, tok, dev)
        unit = dz / dz.norm(dim=-1, keepdim=True)
        out[label] = {
            "constant_share": float(unit.mean(0).norm()),  # ‖mean of z/‖z‖‖: 1 = one direction
            "probe_dev_accuracy": linear_probe(tz, ty, dz, dy),
            "chance": 1 / len(WORDS),
        }
    cfg = PromptConfig(**PROMPT, profile_in="reasoner")
    batch = collate([encode_for_training(ex, tok, cfg) for ex in train[:8]], pad_id(tok), TEACHER_FORCED_PADDING)
    model.train()
    model(**batch).loss.backward()

    def rms(m):
        return float(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]).pow(2).mean().sqrt())

    out["grad_rms"] = {"generator": rms(model.generator), "reasoner": rms(model.reasoner)}
    if model.fusion.latent_mean is not None:
        out["centred"] = True
    return out


def run(name: str, args) -> dict:
    from flythinker.data.longlamp import load_examples
    from flythinker.train.config import apply_overrides, from_dict

    raw = apply_overrides(copy.deepcopy(base_config(args.model, args.steps, args.eval_every)), [*RUNS[name], *args.set])
    cfg = from_dict(__import__("flythinker.train.config", fromlist=["TrainConfig"]).TrainConfig, raw)
    cfg.train.overwrite = True
    train = coded(load_examples(DATA, split="train"))
    dev = coded(load_examples(DATA, split="dev"))[: args.dev]
    trainer = make_trainer_class()(cfg, Path(args.out) / name, train_examples=train)
    trainer.code_dev, trainer.records = dev, []
    trainer.setup()
    result = trainer.fit()
    log = [json.loads(x) for x in (Path(args.out) / name / "log.jsonl").read_text().splitlines() if x.strip()]
    steps = [r["step_time_s"] for r in log if r.get("kind") == "train"]
    gates = {r["step"]: {k: r[k] for k in ("gate", "gate_rms") if k in r} for r in log if "gate" in r}
    return {
        "name": name,
        "overrides": RUNS[name] + args.set,
        "steps": result.steps,
        "curve": trainer.records,
        "train_loss": {r["step"]: r["loss"] for r in log if r.get("kind") == "train"},
        "median_step_s": sorted(steps)[len(steps) // 2] if steps else None,
        "gate": gates,
        "dev_examples": len(dev),
    }


def report(results: Path) -> None:
    """table.md (NLL, exact match and gap closed at every measured step) and gap.png."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if ".diagnosis" not in p.name}
    lines = [
        "# Channel capacity: a code word in R's prompt alone",
        "",
        "Code NLL: nats per dev example, summed over the code's tokens (lower is better). "
        "Gap closed: (floor − run) / (floor − ceiling) at the same step, floor and ceiling of the "
        "same fine-tuning (LoRA or full). Exact: greedy code written exactly.",
        "",
    ]
    plot = {}
    for name, r in runs.items():
        full = name.startswith("full_")
        floor, ceiling = runs.get("full_floor" if full else "floor"), runs.get("full_ceiling" if full else "ceiling")
        lines += [
            f"## {name}",
            "",
            f"`{' '.join(r['overrides'])}`, median step {r['median_step_s']:.2f} s",
            "",
            "| step | code NLL | exact | gap closed |",
            "|---|---|---|---|",
        ]
        xs, ys = [], []
        for point in r["curve"]:
            gap = ""
            if floor and ceiling and name not in ("floor", "ceiling", "full_floor", "full_ceiling"):
                f = next((p["code_nll"] for p in floor["curve"] if p["step"] == point["step"]), None)
                c = next((p["code_nll"] for p in ceiling["curve"] if p["step"] == point["step"]), None)
                if f is not None and c is not None and f - c > 1e-9:
                    value = (f - point["code_nll"]) / (f - c)
                    gap = f"{value:+.3f}"
                    xs.append(point["step"])
                    ys.append(value)
            lines.append(f"| {point['step']} | {point['code_nll']:.3f} | {point['exact']:.3f} | {gap} |")
        lines.append("")
        if xs:
            plot[name] = (xs, ys)
    (results / "table.md").write_text("\n".join(lines) + "\n")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for name, (xs, ys) in plot.items():
            ax.plot(xs, ys, marker="o", ms=3, label=name, ls="--" if name.startswith("full_") else "-")
        ax.axhline(0, color="gray", lw=0.8)
        ax.axhline(1, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("fraction of the floor→ceiling gap closed (code NLL)")
        ax.set_title("Can R's latent carry a code word G does not see?")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(results / "gap.png", dpi=120)
    print(f"wrote {results / 'table.md'}" + (f" and {results / 'gap.png'}" if plot else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="the pulled SmolLM2 folder (G and R)")
    p.add_argument("--out", default="runs/channel_capacity", help="run folders (checkpoints: not committed)")
    p.add_argument("--results", default="results/channel_capacity")
    p.add_argument("--only", default="", help="comma-separated run names (default: all, in order)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--dev", type=int, default=64, help="dev examples measured")
    p.add_argument("--set", action="append", default=[], help="extra KEY=VALUE overrides for every run")
    p.add_argument("--report", action="store_true", help="only write table.md and gap.png")
    p.add_argument("--redo", action="store_true", help="run again even where NAME.json exists")
    p.add_argument("--diagnose", default="", help="comma-separated finished G + R runs: write NAME.diagnosis.json")
    args = p.parse_args()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for name in [n for n in args.diagnose.split(",") if n]:
        result = diagnose(name, args)
        (results / f"{name}.diagnosis.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result))
    if args.diagnose:
        return
    if not args.report:
        if not args.model:
            p.error("--model is required (flythinker models pull smollm2-135m-instruct)")
        names = [n for n in args.only.split(",") if n] or list(RUNS)
        unknown = [n for n in names if n not in RUNS]
        if unknown:
            p.error(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
        for name in names:
            target = results / f"{name}.json"
            if target.exists() and not args.redo:
                print(f"{name}: done ({target})")
                continue
            out = run(name, args)
            tmp = target.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=1) + "\n")
            tmp.replace(target)  # atomic: a cut-off run leaves no half-written result
            if "model.mode=sft" in RUNS[name]:  # G + R runs keep RUN/final for --diagnose
                import shutil

                shutil.rmtree(Path(args.out) / name / "final", ignore_errors=True)
    report(results)


if __name__ == "__main__":
    main()
