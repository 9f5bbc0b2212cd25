"""The fixed choices of command-line options, as enums that typer lists in ``--help`` and checks,
without importing torch (``flythinker --help`` stays fast). ``tests/test_cli.py`` checks each
against the list the code itself uses; :func:`value` turns a member back into its string.

    >>> value(DecodeMode.concurrent), value(None)
    ('concurrent', None)
"""

from __future__ import annotations

from enum import Enum

DecodeMode = Enum(
    "DecodeMode", {m: m for m in ("sequential", "concurrent", "captured", "shared_base")}, type=str
)  # model.DECODERS
ServeMode = Enum(
    "ServeMode", {m: m for m in ("auto", "concurrent", "sequential", "shared_base")}, type=str
)  # serve's Engine
ServeEngine = Enum("ServeEngine", {m: m for m in ("flythinker", "vllm")}, type=str)  # serve --engine
Backend = Enum("Backend", {m: m for m in ("auto", "threads", "streams", "devices", "shm", "gloo", "nccl")}, type=str)
Retrieval = Enum("Retrieval", {m: m for m in ("none", "all", "bm25", "recent")}, type=str)  # data.prompts
Dtype = Enum("Dtype", {m: m for m in ("float32", "bfloat16", "float16", "auto")}, type=str)  # loading.DTYPES
BenchDtype = Enum("BenchDtype", {m: m for m in ("float32", "bfloat16")}, type=str)


def value(choice):
    """A choice's string (None stays None)."""
    return choice.value if isinstance(choice, Enum) else choice
