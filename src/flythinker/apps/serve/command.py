"""`flythinker serve MODEL_DIR`: the personalization server on localhost (uvicorn).

flythinker serve runs/my-model --port 8000 --db runs/profiles.db --api-key $KEY
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import typer

from flythinker.choices import Dtype, ServeEngine, ServeMode, value
from flythinker.errors import UserError

# a model with no training config (a plain base): the 2 most recent profile items, as the
# reproduction trains with
SERVE_PROMPT_DEFAULTS = {"retrieval": "recent", "k": 2}
ENGINE_HELP = (
    "flythinker (our decoders) or vllm (vLLM's engine: paged, batched; pip install 'flythinker[vllm]', "
    "docs/vllm.md). --mode and --device apply to ours."
)
VLLM_ARG_HELP = "KEY=VALUE for vLLM's engine (repeatable), e.g. max_model_len=4096, enforce_eager=true."


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
    engine_kind: ServeEngine = typer.Option("flythinker", "--engine", help=ENGINE_HELP),
    vllm_args: list[str] = typer.Option([], "--vllm-arg", help=VLLM_ARG_HELP),
) -> None:
    """Serve OpenAI-compatible completions personalized by each user's stored profile."""
    from flythinker.extras import require

    require("serve", what="flythinker serve")
    import uvicorn

    from flythinker.apps.serve.app import make_app
    from flythinker.apps.serve.store import ProfileStore
    from flythinker.data.prompt_settings import describe_prompt_config, model_prompt_config

    if max_batch < 1 or max_queue < 1:
        raise UserError("--max-batch and --max-queue must be ≥ 1")
    mode, dtype, engine_kind = value(mode), value(dtype), value(engine_kind)
    prompt_cfg, source = model_prompt_config(model, default=SERVE_PROMPT_DEFAULTS)
    print(f"prompts: {describe_prompt_config(prompt_cfg)}; from {source}")
    net, tok, engine = _engine(engine_kind, model, mode, dtype, device, max_batch, max_queue, vllm_args)
    store = ProfileStore(db)
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
    # uvicorn re-raises SIGTERM once it has shut down; as SystemExit it still runs the cleanup below,
    # which stops vLLM's engine processes too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        engine.close()
        store.close()


def _engine_args(pairs: list[str]) -> dict:
    """``--vllm-arg KEY=VALUE`` → {KEY: VALUE read as YAML (numbers, true/false, lists)}."""
    import yaml

    args = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--vllm-arg {pair!r}: expected KEY=VALUE")
        args[key.strip().replace("-", "_")] = yaml.safe_load(raw)
    return args


def _engine(kind: str, model: Path, mode: str, dtype, device, max_batch: int, max_queue: int, vllm_args: list[str]):
    """(the model or None, its tokenizer, the engine) for ``--engine``."""
    if vllm_args and kind != "vllm":
        raise UserError("--vllm-arg needs --engine vllm")
    engine_args = _engine_args(vllm_args)
    if kind == "vllm":
        from flythinker.extras import require

        require("vllm", what="flythinker serve --engine vllm")
        from flythinker.apps.vllm.serve import VllmEngine, exported_folder
        from flythinker.loading import load_tokenizer

        folder = exported_folder(model)
        engine = VllmEngine(folder, max_batch=max_batch, max_queue=max_queue, dtype=dtype, **engine_args)
        return None, load_tokenizer(folder), engine
    from flythinker.apps.serve.engine import Engine
    from flythinker.auto import load_for_mode
    from flythinker.devices import use_device

    device = use_device(device)
    net, tok = load_for_mode(model, mode, dtype=dtype, device=device, say=print)
    return net, tok, Engine(net, tok, max_batch=max_batch, max_queue=max_queue, mode=mode)
