"""The prompt settings of a trained model folder: one function for the commands that build prompts
for a model folder (generate, serve, probe).

    >>> cfg, source = model_prompt_config("runs/my-run/final")  # doctest: +SKIP
    >>> print(source, describe_prompt_config(cfg))               # doctest: +SKIP
"""

from __future__ import annotations

from flythinker.data.prompts import PromptConfig
from flythinker.errors import UserError


def model_prompt_config(model_dir, default: dict | None = None, overrides: dict | None = None):
    """The prompt settings a model folder was trained with, and where they came from:
    ``(PromptConfig, source)``.

    From the training run's ``config.yaml`` (beside the model folder: ``RUN/final``, ``RUN/best``,
    or in it), else ``default`` (the library's defaults when None), each then changed by the
    ``overrides`` that are not None (a command's explicit flags). ``flythinker generate``, the
    server and the probe build prompts from this (the experiment's cells from the very configs they
    trained with), so a model is decoded with the prompts it was trained on (docs/design.md#prompts-as-trained).

    >>> model_prompt_config("/nonexistent", default={"retrieval": "recent", "k": 2})[1]
    'defaults (no training config.yaml beside /nonexistent)'
    """
    from pathlib import Path

    import yaml

    model_dir = Path(model_dir).expanduser()
    settings, source = dict(default or {}), f"defaults (no training config.yaml beside {model_dir})"
    for cfg in (model_dir / "config.yaml", model_dir.parent / "config.yaml"):
        if cfg.is_file():
            try:
                raw = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise UserError(f"{cfg}: unreadable training config ({e})") from None
            prompt = (raw.get("data") or {}).get("prompt") if isinstance(raw, dict) else None
            if isinstance(raw, dict) and "data" in raw:  # a training config, not a transformers one
                settings, source = dict(prompt or {}), f"training config {cfg}"
                break
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        source += " with " + ", ".join(f"{k}={v}" for k, v in given.items())
    try:
        return PromptConfig(**{**settings, **given}), source
    except TypeError as e:
        raise UserError(f"{source}: bad prompt settings ({e})") from None


def describe_prompt_config(cfg: PromptConfig) -> str:
    """One line: ``retrieval recent, k 2, budgets 256/64/256 tokens (profile/query/target)``."""
    return (
        f"retrieval {cfg.retrieval}, k {cfg.k}, budgets {cfg.profile_tokens}/{cfg.query_tokens}/"
        f"{cfg.target_tokens} tokens (profile/query/target), order {cfg.order}, chat template "
        f"{ {None: 'if the tokenizer has one', True: 'on', False: 'off'}[cfg.use_chat_template] }"
        + (f", layout {cfg.layout}" if cfg.layout != "flythinker" else "")
    )
