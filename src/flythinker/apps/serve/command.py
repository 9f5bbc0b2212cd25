"""`flythinker serve MODEL_DIR`: the personalization server on localhost (uvicorn).

flythinker serve runs/my-model --port 8000 --db runs/profiles.db --api-key $KEY
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from flythinker.errors import UserError


def prompt_config_of(model_dir: Path):
    """The prompt settings the model was trained with (the run's ``config.yaml`` beside ``final/``),
    else the library's defaults with the 2 most recent profile items."""
    import yaml

    from flythinker.data.prompts import PromptConfig

    for cfg in (model_dir / "config.yaml", model_dir.parent / "config.yaml"):
        if cfg.is_file():
            prompt = ((yaml.safe_load(cfg.read_text()) or {}).get("data") or {}).get("prompt") or {}
            return PromptConfig(**prompt)
    return PromptConfig(retrieval="recent", k=2)


def serve_command(
    model: Path = typer.Argument(..., help="A FlyThinker folder or a plain causal-LM folder (SFT)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (localhost unless told otherwise)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    db: str = typer.Option(
        "flythinker-profiles.db", "--db", help="Profile store: a SQLite file or a postgresql:// URL."
    ),
    api_key: str = typer.Option(
        None, "--api-key", help="Require 'Authorization: Bearer KEY' (default: $FLYTHINKER_API_KEY)."
    ),
    max_batch: int = typer.Option(8, "--max-batch", help="Rows of the running batch (requests decoded together)."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests waiting before 503 + Retry-After."),
    mode: str = typer.Option(
        "auto",
        "--mode",
        help="concurrent (R's step beside G's), sequential, or auto "
        "(concurrent on a GPU; sequential on a CPU, where it served faster here).",
    ),
    dtype: str = typer.Option(None, "--dtype", help="Weights dtype (float32, bfloat16; default: as saved)."),
) -> None:
    """Serve OpenAI-compatible completions personalized by each user's stored profile."""
    import uvicorn

    from flythinker.apps.serve.app import make_app
    from flythinker.apps.serve.engine import Engine
    from flythinker.apps.serve.store import ProfileStore
    from flythinker.auto import load_model

    if max_batch < 1 or max_queue < 1:
        raise UserError("--max-batch and --max-queue must be ≥ 1")
    net, tok = load_model(model, dtype=dtype)
    store = ProfileStore(db)
    engine = Engine(net, tok, max_batch=max_batch, max_queue=max_queue, mode=mode)
    app = make_app(
        net,
        tok,
        store,
        prompt_config_of(model),
        api_key=api_key or os.environ.get("FLYTHINKER_API_KEY"),
        engine=engine,
        model_name=model.name,
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        engine.close()
        store.close()
