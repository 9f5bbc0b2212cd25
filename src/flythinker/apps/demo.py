"""`flythinker demo`: the whole method end to end on a laptop CPU, nothing downloaded.

Builds the embedded synthetic dataset (or reads ``--data``), trains a BPE tokenizer, trains
SFT (Generator alone) and FlyThinker (Generator + Reasoner) from the same initialisation for
the same number of steps, generates for held-out users, scores both, times decoding, and
writes a run folder:

    config.json  metrics.json  report.md  predictions/{sft,flythinker}.jsonl  runs/<method>/...

``--base smollm2-135m-instruct`` runs the same on a real pretrained LM (pulled offline with
``flythinker models pull`` when it is not there yet): G = R = that model with LoRA adapters,
its own tokenizer and chat template, sized to finish in about 10 minutes on 2 cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from flythinker.errors import UserError

METHODS = ("sft", "flythinker")


# sizes of the tiny random models (the default demo) and of the smoke test (--small)
TINY = {"generator": dict(hidden_size=96, num_layers=3, num_heads=4, num_kv_heads=2),
        "reasoner": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)}
SMALL = {"generator": dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2),
         "reasoner": dict(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2)}
LORA = dict(r=8, alpha=16.0, dropout=0.0)  # adapters of a pretrained base (--base)


def _demo_config(method: str, data_dir: Path, steps: int, batch_size: int, lr: float, lam: float, seed: int,
                 models: dict, prompt: dict, base: Path | None = None):
    """The TrainConfig of one method: tiny random models (``models`` sizes), or LoRA on ``base``."""
    from flythinker.train.config import (
        DataConfig,
        LoraSpec,
        ModelConfig,
        ModelSpec,
        TinyModel,
        TrainConfig,
        TrainSettings,
    )

    if base is None:
        specs = {k: ModelSpec(tiny=TinyModel(**models[k])) for k in ("generator", "reasoner")}
        tokenizer = dict(tokenizer="train", tokenizer_vocab_size=2000)
    else:
        specs = {k: ModelSpec(path=str(base), lora=LoraSpec(**LORA)) for k in ("generator", "reasoner")}
        tokenizer = dict(tokenizer=str(base))
    return TrainConfig(
        model=ModelConfig(**specs, mode=method, lam=lam, **tokenizer),
        data=DataConfig(path=str(data_dir), dev_split="dev", limit_dev=32 if base is None else 8, prompt=prompt),
        train=TrainSettings(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 20),
                            schedule="cosine", min_lr_ratio=0.1, weight_decay=0.01, seed=seed, save_every=0,
                            eval=True, log_every=10 if base is None else 1,
                            precision="fp32" if base is None else "bf16"),
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
    base: str = typer.Option(None, "--base", help="A real pretrained base for G and R: a name of "
                             "`flythinker models list` (pulled if needed) or a local model folder."),
    steps: int = typer.Option(None, "--steps", help="Training steps for each method (default 600; 24 with --base)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Training batch size (default 8; 4 with --base)."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (default 2e-3; 2e-4 with --base)."),
    lam: float = typer.Option(None, "--lam", help="λ, the weight of the Reasoner's latent (default 0.5; 0.05 with --base)."),
    test_limit: int = typer.Option(None, "--test-limit", help="Held-out examples to generate for (default 40; 16 with --base)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Most new tokens per example (default 192; 96 with --base)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, the initialisation and the sampling."),
    small: bool = typer.Option(False, "--small", help="Tiny sizes for a smoke test (seconds, not minutes)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU when there is one)."),
) -> None:
    """Run the whole method end to end: data → tokenizer → SFT and FlyThinker → generate → score."""
    defaults = BASE_DEFAULTS if base else DEFAULTS
    given = dict(steps=steps, batch_size=batch_size, lr=lr, lam=lam, test_limit=test_limit,
                 max_new_tokens=max_new_tokens)
    settings = {k: defaults[k] if v is None else v for k, v in given.items()}
    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    _check_args(out, data, overwrite, settings)
    from flythinker.devices import use_device

    use_device(device)
    run_demo(out, data, base=base, seed=seed, small=small, **settings)


DEFAULTS = dict(steps=600, batch_size=8, lr=2e-3, lam=0.5, test_limit=40, max_new_tokens=192)
# a real base on 2 cores: ~8 s (SFT) and ~15 s (FlyThinker) per step; λ 0.1: the measured
# start-up shock of λ 0.5 (results/startup_shock) is too large for a few dozen steps; 0.05 had the
# lowest dev NLL of the λ values measured there
BASE_DEFAULTS = dict(steps=24, batch_size=4, lr=2e-4, lam=0.05, test_limit=16, max_new_tokens=96)


def _check_args(out: Path, data: Path | None, overwrite: bool, settings: dict) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a run folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds a run (pass --overwrite to replace it, or --out elsewhere)")
    if data is not None and not data.is_dir():
        raise UserError(f"--data {data}: not a folder (expected train/dev/test LongLaMP-format files)")
    for name in ("steps", "batch_size", "test_limit", "max_new_tokens"):
        if settings[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1, got {settings[name]}")


def _base_folder(base: str | None) -> Path | None:
    """A local folder for ``--base``: a folder as given, or a registry model (pulled if needed)."""
    if base is None:
        return None
    if Path(base).expanduser().is_dir():
        return Path(base).expanduser()
    from flythinker.apps.models import pull

    return pull(base)


def run_demo(out: Path, data: Path | None, *, base: str | None, steps: int, batch_size: int, lr: float, lam: float,
             test_limit: int, max_new_tokens: int, seed: int = 0, small: bool = False) -> dict:
    """The demo into the run folder ``out``; returns ``{method: metrics}``."""
    import torch
    from rich.console import Console

    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig, sentence_spans
    from flythinker.data.synthetic import write_synthetic

    console = Console() if Console().is_terminal else Console(width=130)  # a log file: room for the table
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base_dir = _base_folder(base)
    synthetic = data is None
    data_dir = write_synthetic(out / "data", seed=seed) if synthetic else data
    console.print(f"[bold]data[/]: {data_dir} ({'built-in synthetic' if synthetic else 'user data'})"
                  + (f"; [bold]base[/]: {base_dir}" if base_dir else ""))
    if small:
        steps, test_limit, max_new_tokens = min(steps, 12), min(test_limit, 4), min(max_new_tokens, 16)
    models = SMALL if small else TINY
    prompt = dict(profile_tokens=256, query_tokens=64, target_tokens=256 if base_dir is None else 128,
                  retrieval="recent", k=2)
    config = dict(data=str(data_dir), synthetic=synthetic, base=str(base_dir) if base_dir else None, steps=steps,
                  batch_size=batch_size, lr=lr, lam=lam, seed=seed, test_limit=test_limit,
                  max_new_tokens=max_new_tokens, **({} if base_dir else models), prompt=prompt,
                  decoding=dict(temperature=0.8, top_p=0.95))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    sentence_spans("Warm up. The sentence splitter loads once, outside both timed runs.")
    test = load_examples(data_dir, split="test", limit=test_limit)
    metrics = {}
    for method in METHODS:
        console.rule(f"[bold]{method}")
        cfg = _demo_config(method, data_dir, steps, batch_size, lr, lam, seed, models, prompt, base_dir)
        metrics[method] = _train_and_score(method, cfg, out, test, PromptConfig(**prompt), max_new_tokens, seed,
                                           synthetic)
    _report(console, out, metrics, test, steps, synthetic, data, base, time.perf_counter() - t_start)
    return metrics


def _train_and_score(method: str, cfg, out: Path, test: list, prompt_cfg, max_new_tokens: int, seed: int,
                     synthetic: bool) -> dict:
    """Train one method, generate for the test examples, score them, time batch-1 decoding."""
    from flythinker.apps.generate import DecodeSettings, generate_predictions
    from flythinker.auto import load_model
    from flythinker.data.predictions import read_predictions
    from flythinker.devices import pick_device
    from flythinker.evaluate.metrics import compute_metrics
    from flythinker.train.trainer import train

    result = train(cfg, out / "runs" / method)
    model, tok = load_model(result.final_checkpoint, device=pick_device())
    settings = DecodeSettings(max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_p=0.95,
                              seed=seed, batch_size=8)
    pred_file = out / "predictions" / f"{method}.jsonl"
    generate_predictions(model, tok, test, pred_file, prompt_cfg=prompt_cfg, settings=settings)
    by_id = read_predictions(pred_file)
    preds, references = [by_id[e.id] for e in test], [e.output for e in test]
    m = compute_metrics(preds, references, user_ids=[e.user_id for e in test], bertscore=False,
                        bootstrap=200, seed=seed, meteor=None)  # METEOR where WordNet is installed
    if synthetic:
        m["opening_match"] = _opening_match(preds, references)
    m["train_seconds"] = result.train_time_s
    timing_tokens = min(64, max_new_tokens)
    m["ms_per_token"] = _time_decoding(model, tok, test[0], prompt_cfg, timing_tokens, "sequential")
    if method == "flythinker":  # the paper's claim: R and G concurrently cost about SFT's latency
        m["ms_per_token_concurrent"] = _time_decoding(model, tok, test[0], prompt_cfg, timing_tokens, "concurrent")
    return m


def _report(console, out: Path, metrics: dict, test: list, steps: int, synthetic: bool, data, base, total: float):
    """Print the results table; write metrics.json and report.md."""
    from rich.table import Table

    from flythinker.evaluate.report import fmt_metric

    table = Table(title=f"FlyThinker demo — {len(test)} held-out examples, {steps} training steps each")
    cols = ["method", "ROUGE-1", "ROUGE-L", "BLEU", "METEOR"] + (["opening"] if synthetic else [])
    cols += ["train s", "ms/tok seq", "ms/tok conc"]
    for c in cols:
        table.add_column(c, justify="left" if c == "method" else "right", no_wrap=c == "method")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for method, m in metrics.items():
        cells = [method] + [fmt_metric(k, m.get(k), missing="n/a") for k in ("rouge1", "rougeL", "bleu", "meteor")]
        cells += [f"{m['opening_match']:.2f}"] if synthetic else []
        concurrent = m.get("ms_per_token_concurrent")
        cells += [f"{m['train_seconds']:.0f}", f"{m['ms_per_token']:.2f}", "—" if concurrent is None else f"{concurrent:.2f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    command = f"flythinker demo --out {out}" + (f" --data {data}" if data else "") + (f" --base {base}" if base else "")
    report = ["# FlyThinker demo\n", f"Command: `{command}`\n", *lines, "",
              f"Total wall time: {total:.0f} s. BLEU is sacreBLEU 0–100; ROUGE/METEOR 0–1; opening: share of "
              "predictions that open with the user's signature phrase (synthetic data); train s: seconds in "
              "training steps; "
              "ms/token: batch-1 greedy decoding, best of 3, with the reference (sequential) decoder and, "
              "for FlyThinker, also the concurrent one (R and G at the same time, same tokens).", ""]
    (out / "report.md").write_text("\n".join(report))
    console.print(f"run folder: [bold]{out}[/]  (total {total:.0f} s)")
