"""Decoders. Every one drives a *stepper* (stepper.py: both models' state for the rows decoding
now; ``add`` prefills rows, ``step`` runs one token of every row) from the one decoding loop
(loop.py), which samples, ends rows at EOS and pads them:

  sequential   the pair stepper with R's step in place (the reference)
  concurrent   the pair stepper with R's step on a thread, CUDA stream, device or worker process
  captured     a stepper over static caches whose step is recorded (CUDA graphs on a GPU)
  shared_base  a stepper whose step is one forward of G's and R's shared base (2B rows)

The server's engine drives the same steppers, rows joining and leaving between steps. The modes
are one table (``flythinker.choices.DECODER_TABLE``); ``FlyThinker.generate`` reaches them through
:mod:`flythinker.decoding.dispatch`. All decoders take the same arguments and return the same tokens.
"""

from __future__ import annotations

from flythinker.decoding.dispatch import MODES, decode, generate
from flythinker.decoding.streaming import stream

__all__ = ["MODES", "decode", "generate", "make_stepper", "stream"]


def make_stepper(model, mode: str = "sequential", threads: int | None = None):
    """The stepper the server's running batch uses for a batchable ``mode``: ``sequential`` (R in
    place), ``concurrent`` (R's step on a worker thread, with ``threads`` intra-op threads; a side
    CUDA stream on one GPU) or ``shared_base`` (one forward of the shared base)."""
    from flythinker.choices import DECODER_TABLE
    from flythinker.errors import UserError

    servable = [d.name for d in DECODER_TABLE if d.server]
    if mode not in servable:
        raise UserError(f"a running batch decodes with one of {servable}, got {mode!r}")
    if mode == "shared_base":
        from flythinker.decoding.shared_base import SharedBaseStepper

        return SharedBaseStepper(model)
    from flythinker.decoding.stepper import PairStepper

    if mode == "concurrent" and model.reasoning == "every_token":
        from flythinker.decoding.concurrent import threaded_handle

        return PairStepper(model, threaded_handle(model, threads), owns_handle=True)
    return PairStepper(model)
