"""`flythinker serve MODEL_DIR`: the personalization server on localhost (uvicorn).

flythinker serve runs/my-model --port 8000 --db runs/profiles.db --api-key $KEY
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from flythinker.choices import Dtype, ServeMode, value
from flythinker.errors import UserError

# a model with no training config (a plain base): the 2 most recent profile items, as the
# reproduction trains with
SERVE_PROMPT_DEFAULTS = {"retrieval": "recent", "k": 2}


def _freeze_long_lived() -> None:
    """The loaded model, tokenizer and libraries live as long as the server: out of the garbage
    collector's full scans, whose pauses (every thread stops) were the slowest /health answers
    under load (150-240 ms, against <= 10 ms frozen)."""
    import gc

    gc.collect()
    gc.freeze()


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
    mode: ServeMode = typer.Option(
        "auto",
        "--mode",
        help="concurrent (R's step beside G's), sequential, auto "
        "(concurrent on a GPU; sequential on a CPU, where it served faster here), or shared_base "
        "(G and R one base, a LoRA run's adapters/ loaded over it: one forward a step).",
    ),
    dtype: Dtype = typer.Option(None, "--dtype", help="Weights dtype (default: as saved)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU when there is one)."),
) -> None:
    """Serve OpenAI-compatible completions personalized by each user's stored profile."""
    from flythinker.extras import require

    require("serve", what="flythinker serve")
    import uvicorn

    from flythinker.apps.serve.app import make_app
    from flythinker.apps.serve.engine import Engine
    from flythinker.apps.serve.store import ProfileStore
    from flythinker.auto import load_for_mode
    from flythinker.data.prompt_settings import describe_prompt_config, model_prompt_config
    from flythinker.devices import use_device

    if max_batch < 1 or max_queue < 1:
        raise UserError("--max-batch and --max-queue must be ≥ 1")
    mode, dtype = value(mode), value(dtype)
    device = use_device(device)
    prompt_cfg, source = model_prompt_config(model, default=SERVE_PROMPT_DEFAULTS)
    print(f"prompts: {describe_prompt_config(prompt_cfg)}; from {source}")
    net, tok = load_for_mode(model, mode, dtype=dtype, device=device, say=print)
    store = ProfileStore(db)
    engine = Engine(net, tok, max_batch=max_batch, max_queue=max_queue, mode=mode)
    app = make_app(
        net,
        tok,
        store,
        prompt_cfg,
        api_key=api_key or os.environ.get("FLYTHINKER_API_KEY"),
        engine=engine,
        model_name=model.name,
    )
    _freeze_long_lived()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        engine.close()
        store.close()
