"""The fixed choices of command-line options, as enums that typer lists in ``--help`` and checks,
without importing torch (``flythinker --help`` stays fast). ``tests/test_cli.py`` checks each
against the list the code itself uses; :func:`value` turns a member back into its string.

    >>> value(DecodeMode.concurrent), value(None)
    ('concurrent', None)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Decoder:
    """One decoding mode: its name, how it runs, whether it takes a ``backend``, whether the
    server's running batch can run it (rows join and leave between steps), and its entry point:
    ``"module:function"``, resolved by name on first use (as package entry points are), so the
    core that lists the decoders never imports them."""

    name: str
    runs: str
    backend: bool
    server: bool
    entry: str


# The one table of decoders: `generate --mode`, `serve --mode`, `bench decode` and the dispatch of
# FlyThinker.generate (flythinker.decoding.dispatch) are all derived from it
# (tests/decoding/test_decoder_table.py).
_D = "flythinker.decoding."
DECODER_TABLE = (
    Decoder("sequential", "R's step, then G's, in place: the reference", False, True, _D + "loop:generate_sequential"),
    Decoder(
        "concurrent",
        "R's step beside G's (threads, CUDA streams, devices or processes)",
        True,
        True,
        _D + "concurrent:generate_concurrent",
    ),
    Decoder(
        "captured",
        "one recorded step over static caches (CUDA graphs on a GPU)",
        True,
        False,
        _D + "captured:generate_captured",
    ),
    Decoder(
        "shared_base",
        "G's and R's rows in one forward of their shared base (LoRA runs)",
        False,
        True,
        _D + "shared_base:generate_shared_base",
    ),
)
# What FlyThinker.generate calls, and the model classes that saved variants name: resolved by name
DECODE_ENTRY = _D + "dispatch:generate"
VARIANT_ENTRIES = {
    "static": "flythinker.static:StaticThinker",
    "separate_prompts": "flythinker.separate:SeparatePromptThinker",
}
DecodeMode = Enum("DecodeMode", {d.name: d.name for d in DECODER_TABLE}, type=str)
# the server: its batchable decoders, and auto (concurrent on a GPU, sequential on a CPU)
ServeMode = Enum("ServeMode", {"auto": "auto", **{d.name: d.name for d in DECODER_TABLE if d.server}}, type=str)
ServeEngine = Enum("ServeEngine", {m: m for m in ("flythinker", "vllm")}, type=str)  # serve --engine
Backend = Enum("Backend", {m: m for m in ("auto", "threads", "streams", "devices", "shm", "gloo", "nccl")}, type=str)
Retrieval = Enum("Retrieval", {m: m for m in ("none", "all", "bm25", "recent")}, type=str)  # data.prompts
Dtype = Enum("Dtype", {m: m for m in ("float32", "bfloat16", "float16", "auto")}, type=str)  # loading.DTYPES
BenchDtype = Enum("BenchDtype", {m: m for m in ("float32", "bfloat16")}, type=str)


def resolve(entry: str):
    """The object an entry point ``"module:name"`` names (its module is imported now)."""
    from importlib import import_module

    module, _, name = entry.partition(":")
    return getattr(import_module(module), name)


def value(choice):
    """A choice's string (None stays None)."""
    return choice.value if isinstance(choice, Enum) else choice
