"""`flythinker train` (heavy imports inside the function, so `flythinker --help` stays fast).

flythinker train src/flythinker/configs/tiny_flythinker.yaml train.epochs=1 model.lam=0.3
accelerate launch --config_file configs/accelerate/ddp.yaml -m flythinker.cli train CONFIG.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def train_command(
    config: Annotated[
        Path, typer.Argument(help="YAML config: a file, or a bundled config's name (flythinker configs list).")
    ],
    overrides: Annotated[
        Optional[list[str]],
        typer.Argument(help="KEY=VALUE overrides, e.g. train.lr=1e-4 model.lam=0.3", show_default=False),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Run folder (default: runs/<config file name>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run folder's last complete checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete a previous run in the run folder.")] = False,
    device: Annotated[
        Optional[str], typer.Option("--device", help="cpu, cuda or cuda:N (default: the GPU when there is one).")
    ] = None,
) -> None:
    """Train FlyThinker (G + R) or the SFT baseline; one CPU, or many GPUs via accelerate launch."""
    import os

    from flythinker.devices import use_device
    from flythinker.train.config import load_config
    from flythinker.train.trainer import train

    extra = list(overrides or [])
    if resume:
        extra.append("train.resume=true")
    if overwrite:
        extra.append("train.overwrite=true")
    use_device(device, say=print if os.environ.get("RANK", "0") == "0" else None)
    from flythinker.bundled import resolve_config

    config = resolve_config(config)
    cfg = load_config(config, extra)
    train(cfg, out or Path("runs") / config.stem)
