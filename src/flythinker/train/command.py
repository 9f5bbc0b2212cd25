"""`flythinker train` and `flythinker bench train` (heavy imports inside the functions).

    flythinker train src/flythinker/configs/tiny_flythinker.yaml train.epochs=1 model.lam=0.3
    accelerate launch --config_file configs/accelerate/ddp.yaml -m flythinker.cli train CONFIG.yaml
    flythinker bench train --json bench_train.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def train_command(
    config: Annotated[Path, typer.Argument(help="YAML config (see src/flythinker/configs/).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="KEY=VALUE overrides, e.g. train.lr=1e-4 model.lam=0.3", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default: runs/<config file name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last complete checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete a previous run in the run folder.")] = False,
) -> None:
    """Train FlyThinker (G + R) or the SFT baseline; one CPU, or many GPUs via accelerate launch."""
    from flythinker.train.config import load_config
    from flythinker.train.trainer import train

    extra = list(overrides or [])
    if resume:
        extra.append("train.resume=true")
    if overwrite:
        extra.append("train.overwrite=true")
    cfg = load_config(config, extra)
    train(cfg, out or Path("runs") / config.stem)


def bench_train_command(
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON here.")] = None,
    hidden: Annotated[int, typer.Option(help="Hidden size of G and R.")] = 256,
    layers: Annotated[int, typer.Option(help="Decoder layers of G and R.")] = 6,
    vocab: Annotated[int, typer.Option(help="Vocabulary size.")] = 4096,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence (half prompt, half response).")] = 256,
    repeats: Annotated[int, typer.Option(help="Timed steps per configuration (interleaved).")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed steps per configuration first.")] = 2,
    memory: Annotated[bool, typer.Option(help="Measure peak memory (one fresh process per configuration on CPU).")] = True,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Step time and peak memory of SFT(G), SFT(R) and FlyThinker(G+R), same data and batch."""
    from flythinker.train.bench import BenchConfig, print_table, run_bench, write_json

    cfg = BenchConfig(hidden=hidden, layers=layers, vocab=vocab, batch_size=batch_size, seq_len=seq_len,
                      repeats=repeats, warmup=warmup, memory=memory, device=device,
                      threads=threads)
    result = run_bench(cfg)
    print_table(result)
    if json_path is not None:
        write_json(result, json_path)
        print(f"wrote {json_path}")
