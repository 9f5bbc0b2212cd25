"""`flythinker demo`: the whole method end to end on a laptop CPU, nothing downloaded.

Builds the embedded synthetic dataset (or reads ``--data``), trains a BPE tokenizer, trains
SFT (Generator alone) and FlyThinker (Generator + Reasoner) from the same initialisation for
the same number of steps, generates for held-out users, scores both, times decoding, and
writes a run folder:

    config.json  metrics.json  report.md  predictions/{sft,flythinker}.jsonl  runs/<method>/...
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from flythinker.errors import UserError

METHODS = ("sft", "flythinker")


def _demo_config(method: str, data_dir: Path, steps: int, batch_size: int, lr: float, lam: float, seed: int,
                 generator: dict, reasoner: dict, prompt: dict):
    from flythinker.train.config import DataConfig, ModelConfig, ModelSpec, OptimConfig, TinyModel, TrainConfig

    return TrainConfig(
        model=ModelConfig(
            generator=ModelSpec(tiny=TinyModel(**generator)),
            reasoner=ModelSpec(tiny=TinyModel(**reasoner)),
            mode=method, lam=lam, tokenizer="train", tokenizer_vocab_size=2000,
        ),
        data=DataConfig(path=str(data_dir), dev_split="dev", limit_dev=32, prompt=prompt),
        train=OptimConfig(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 20),
                          schedule="cosine", min_lr_ratio=0.1, weight_decay=0.01, seed=seed,
                          save_every=0, eval=True, log_every=10),
    )


def _time_decoding(model, tokenizer, example, prompt_cfg, new_tokens: int, mode: str) -> float:
    """Milliseconds per generated token at batch 1 (greedy, EOS ignored so every run is as long)."""
    import torch

    from flythinker.data.prompts import encode_for_generation

    ids = torch.tensor([encode_for_generation(example, tokenizer, prompt_cfg)])
    kw = dict(max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=tokenizer.pad_token_id, mode=mode)
    model.generate(ids, max_new_tokens=4, eos_token_id=[], mode=mode)  # warm-up (and start workers)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        model.generate(ids, **kw)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / new_tokens


def _opening_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions that open with the reference's (= the user's) signature opening."""
    from flythinker.data.synthetic import style_signature

    hits = [style_signature(p)["opening"] == style_signature(r)["opening"] for p, r in zip(predictions, references)]
    return sum(hits) / max(1, len(hits))


def demo_command(
    out: Path = typer.Option(None, "--out", help="Run folder to create (default: runs/demo-<date-time>)."),
    data: Path = typer.Option(None, "--data", help="LongLaMP-format folder with train/dev/test files "
                              "(default: the built-in synthetic dataset)."),
    steps: int = typer.Option(600, "--steps", help="Training steps for each method."),
    batch_size: int = typer.Option(8, "--batch-size", help="Training batch size."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate."),
    lam: float = typer.Option(0.5, "--lam", help="λ, the weight of the Reasoner's latent."),
    test_limit: int = typer.Option(40, "--test-limit", help="Held-out examples to generate for."),
    max_new_tokens: int = typer.Option(192, "--max-new-tokens", help="Most new tokens per example."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, the initialisation and the sampling."),
    small: bool = typer.Option(False, "--small", help="Tiny sizes for a smoke test (seconds, not minutes)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
) -> None:
    """Run the whole method end to end: data → tokenizer → SFT and FlyThinker → generate → score."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the results table
        console = Console(width=130)
    t_start = time.perf_counter()
    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a run folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds a run (pass --overwrite to replace it, or --out elsewhere)")
    if data is not None and not data.is_dir():
        raise UserError(f"--data {data}: not a folder (expected train/dev/test LongLaMP-format files)")
    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--test-limit", test_limit),
                        ("--max-new-tokens", max_new_tokens)):
        if value < 1:
            raise UserError(f"{name} must be ≥ 1, got {value}")
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig, sentence_spans
    from flythinker.data.synthetic import write_synthetic
    from flythinker.evaluate.metrics import compute_metrics
    from flythinker.predict import DecodeSettings, generate_predictions, load_for_inference
    from flythinker.train.trainer import train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    synthetic = data is None
    data_dir = write_synthetic(out / "data", seed=seed) if synthetic else data
    console.print(f"[bold]data[/]: {data_dir} ({'built-in synthetic' if synthetic else 'user data'})")
    if small:
        steps, test_limit, max_new_tokens = min(steps, 12), min(test_limit, 4), min(max_new_tokens, 16)
        generator = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
        reasoner = dict(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2)
    else:
        generator = dict(hidden_size=96, num_layers=3, num_heads=4, num_kv_heads=2)
        reasoner = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    prompt = dict(profile_tokens=256, query_tokens=64, target_tokens=256, retrieval="recent", k=2)
    prompt_cfg = PromptConfig(**prompt)
    config = dict(data=str(data_dir), synthetic=synthetic, steps=steps, batch_size=batch_size, lr=lr, lam=lam,
                  seed=seed, test_limit=test_limit, max_new_tokens=max_new_tokens, generator=generator,
                  reasoner=reasoner, prompt=prompt, decoding=dict(temperature=0.8, top_p=0.95))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    sentence_spans("Warm up. The sentence splitter loads once, outside both timed runs.")
    test = load_examples(data_dir, split="test", limit=test_limit)
    references = [e.output for e in test]
    rows, metrics = {}, {}
    for method in METHODS:
        console.rule(f"[bold]{method}")
        cfg = _demo_config(method, data_dir, steps, batch_size, lr, lam, seed, generator, reasoner, prompt)
        result = train(cfg, out / "runs" / method)
        model, tok = load_for_inference(result.final_checkpoint)
        settings = DecodeSettings(max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                                  seed=seed, batch_size=8)
        pred_file = out / "predictions" / f"{method}.jsonl"
        generate_predictions(model, tok, test, pred_file, prompt_cfg=prompt_cfg, settings=settings)
        preds = [json.loads(x)["prediction"] for x in pred_file.read_text().splitlines()]
        m = compute_metrics(preds, references, user_ids=[e.user_id for e in test], bertscore=False,
                            bootstrap=200, seed=seed, meteor=None)  # METEOR where WordNet is installed
        if synthetic:
            m["opening_match"] = _opening_match(preds, references)
        m["train_seconds"] = result.train_time_s
        timing_tokens = min(64, max_new_tokens)
        m["ms_per_token"] = _time_decoding(model, tok, test[0], prompt_cfg, timing_tokens, "sequential")
        if method == "flythinker":  # the paper's claim: R and G concurrently cost about SFT's latency
            m["ms_per_token_concurrent"] = _time_decoding(model, tok, test[0], prompt_cfg, timing_tokens, "concurrent")
        metrics[method] = m
        rows[method] = m

    table = Table(title=f"FlyThinker demo — {len(test)} held-out examples, {steps} training steps each")
    cols = ["method", "ROUGE-1", "ROUGE-L", "BLEU", "METEOR"] + (["opening"] if synthetic else [])
    cols += ["train s", "ms/tok seq", "ms/tok conc"]
    for c in cols:
        table.add_column(c, justify="left" if c == "method" else "right", no_wrap=c == "method")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for method, m in rows.items():
        cells = [method, f"{m['rouge1']:.4f}", f"{m['rougeL']:.4f}", f"{m['bleu']:.2f}",
                 "n/a" if m.get("meteor") is None else f"{m['meteor']:.4f}"]
        cells += [f"{m['opening_match']:.2f}"] if synthetic else []
        concurrent = m.get("ms_per_token_concurrent")
        cells += [f"{m['train_seconds']:.0f}", f"{m['ms_per_token']:.2f}", "—" if concurrent is None else f"{concurrent:.2f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    total = time.perf_counter() - t_start
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = [f"# FlyThinker demo\n", f"Command: `flythinker demo --out {out}"
              + (f" --data {data}" if data else "") + "`\n", *lines, "",
              f"Total wall time: {total:.0f} s. BLEU is sacreBLEU 0–100; ROUGE/METEOR 0–1; opening: share of "
              "predictions that open with the user's signature phrase (synthetic data); train s: seconds in "
              "training steps; "
              "ms/token: batch-1 greedy decoding, best of 3, with the reference (sequential) decoder and, "
              "for FlyThinker, also the concurrent one (R and G at the same time, same tokens).", ""]
    (out / "report.md").write_text("\n".join(report))
    console.print(f"run folder: [bold]{out}[/]  (total {total:.0f} s)")
