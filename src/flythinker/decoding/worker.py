"""The Reasoner in another process: R's side of a concurrent decode and the process that runs it.

One protocol for every multi-process backend; a decode is one *job*:

    G -> R   job: prompt ids (B, T), attention mask (B, T), threads
    R -> G   prompt latents (B, T, d_R)
    repeat:  G -> R  tokens s_n (B,)         R -> G  latent z_n (B, 1, d_R)
    G -> R   stop

A *link* carries the messages: shared memory and semaphores (shm.py) or torch.distributed
send/recv (dist_link.py). This module only calls the link's methods.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import shutil
import signal
import traceback
import weakref
from types import SimpleNamespace

import torch

from flythinker.decoding.steps import ReasonerRunner
from flythinker.errors import UserError
from flythinker.lm import positions_from_mask

JOB, LOAD, CLOSE = 0, 1, 2  # control messages
STEP, STOP = 1, 0  # the first word of a step message: one more token, or the end of the job


def serve_job(runner: ReasonerRunner, input_ids, attention_mask, link) -> None:
    """R's half of one decode: prefill, then one latent per token until G says stop."""
    # G pads finished rows before sending, so R's bookkeeping needs no EOS handling: the mask
    # and positions grow as the pair stepper's do
    mask = attention_mask.long()
    positions = positions_from_mask(mask)
    link.send_prefill(runner.prefill(input_ids, mask, positions))  # (B, T, d_R)
    position = positions[:, -1:]
    while (tokens := link.recv_tokens()) is not None:  # (B,)
        mask, position = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1), position + 1
        link.send_latent(runner.step(tokens, mask, position))  # (B, 1, d_R)


@torch.no_grad()
def serve(link, model=None) -> None:
    """Answer G's jobs until it sends CLOSE; a LOAD message replaces the Reasoner."""
    while True:
        command, payload = link.recv_command()
        if command == CLOSE:
            return
        if command == LOAD:
            model = SimpleNamespace(reasoner=payload)  # all ReasonerRunner needs of a FlyThinker
            continue
        input_ids, attention_mask, threads = payload
        if threads:
            torch.set_num_threads(threads)
        serve_job(ReasonerRunner(model), input_ids, attention_mask, link)


class RemoteReasoner:
    """G's handle on a Reasoner served over ``link``: the calls the pair stepper makes."""

    def __init__(self, link, process: "ReasonerProcess | None" = None, threads: int | None = None):
        self.link, self.process, self.threads = link, process, threads
        self.pending = False  # a latent was asked for and not yet received
        self.broken = False  # the worker is gone or out of step: the decoder must be closed

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except BaseException:
            self.broken = True
            raise

    def bind(self, model) -> None:
        check_shared_memory(model.reasoner)
        self._call(self.link.send_command, LOAD, model.reasoner)  # weights go as shared memory

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:  # (B, T, d_R)
        self._call(self.link.send_command, JOB, (input_ids, attention_mask, self.threads))
        return self._call(self.link.recv_prefill)

    # the pending flag changes inside _call: an exception (even Ctrl-C) between the message and
    # the flag marks the link broken, so ``finish`` never waits for a latent that will not come
    def launch(self, tokens, attention_mask, position_ids) -> None:
        def send():
            self.link.send_tokens(tokens)
            self.pending = True

        self._call(send)

    def latent(self) -> torch.Tensor:  # (B, 1, d_R)
        def receive():
            out = self.link.recv_latent()
            self.pending = False
            return out

        return self._call(receive)

    def finish(self) -> None:
        if self.broken:
            return
        if self.pending:  # stopped early (error, Ctrl-C): take the latent R owes us, stay in step
            self.latent()
        self._call(self.link.send_stop)

    def close(self) -> None:
        if self.process is not None:
            self.process.close(graceful=not self.broken)
        elif not self.broken:  # a peer rank under torchrun: tell it to stop serving
            self._call(self.link.send_command, CLOSE)


def check_shared_memory(module, root: str = "/dev/shm") -> None:
    """Refuse clearly, before torch fails deep inside pickling, when ``root`` (a tmpfs; Docker's
    default is 64 MB) cannot hold the weights that sharing ``module`` with a worker moves there."""
    if not os.path.isdir(root):
        return
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in module.state_dict().values()}
    need = sum(s.nbytes() for s in storages.values() if not s.is_shared())
    free = shutil.disk_usage(root).free
    if need > free:
        raise UserError(
            f"the reasoner's weights ({need / 2**20:.0f} MiB) do not fit in {root} ({free / 2**20:.0f} MiB free), "
            "where a worker process shares them; enlarge it (e.g. docker run --shm-size=8g) or use backend='threads'"
        )


def send_message(conn, message, share: bool = False) -> None:
    """Pickle ``message`` into the pipe: by value, or with ``share`` its tensors as shared memory.

    Sharing moves a tensor's storage into shared memory in place and hands the receiver a file
    descriptor (torch's reductions): right for R's weights and the step buffers, sent once;
    small per-job tensors go faster by value. ``conn.recv()`` reads either.
    """
    if share:
        conn.send(message)
    else:
        conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def _worker_main(conn, parent_end, make_link, args) -> None:
    """Entry of the worker process: build the link, say ready, serve until CLOSE."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us cleanly
    parent_end.close()  # with fork we inherit it; closed, our recv sees EOF when the parent dies
    try:
        link = make_link(conn, *args)
        send_message(conn, ("ready", None))
        serve(link)
    except BaseException:
        try:
            send_message(conn, ("error", traceback.format_exc()))
        except (OSError, ValueError):
            pass  # the parent is gone
        raise SystemExit(1) from None


_PRELOAD = ["flythinker.decoding.shm", "flythinker.decoding.dist_link"]


def context(start_method: str = "forkserver", preload: list[str] = ()):
    """A multiprocessing context for workers.

    ``forkserver`` (the default where it exists) forks each worker from a clean server process
    that imported torch (and ``preload``: the first Reasoner's transformers module) once: as safe
    as ``spawn`` (never a fork of a process whose OpenMP threads run), and a worker starts in
    a fraction of a second instead of seconds.
    """
    if start_method == "forkserver" and start_method not in multiprocessing.get_all_start_methods():
        start_method = "spawn"
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":  # takes effect when the server starts, i.e. at first use
        _PRELOAD.extend(m for m in preload if m.startswith("transformers.") and m not in _PRELOAD)
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx


class WorkerError(RuntimeError):
    """The Reasoner worker died or failed; its decoder starts a new worker at the next call."""


class ReasonerProcess:
    """A worker process that runs ``serve`` over the link ``make_link(conn, *args)`` builds there.

    Errors in the worker come back as :class:`WorkerError` with its traceback; a worker that
    dies is noticed within ~50 ms by whoever waits on it.
    """

    def __init__(self, make_link, args=(), ctx=None):
        ctx = ctx or context()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child, self.conn, make_link, args), daemon=True, name="flythinker-reasoner"
        )
        self.proc.start()
        child.close()
        _LIVE.add(self)
        try:
            self.recv()
        except WorkerError as e:
            self.close(graceful=False)
            raise WorkerError(
                f"{e}\nthe reasoner worker could not start; with start_method 'forkserver' or 'spawn' a "
                "script that decodes at import time must guard its entry point with `if __name__ == '__main__':`"
            ) from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        """Raise WorkerError if the worker reported an error or exited."""
        if self.conn.poll():
            self.recv()  # raises on "error" and on EOF
        if not self.proc.is_alive():
            raise WorkerError(f"reasoner worker (pid {self.pid}) exited with code {self.proc.exitcode}")

    def recv(self):
        """The worker's next message, checking every 50 ms that it is still alive."""
        while not self.conn.poll(0.05):
            if not self.proc.is_alive():
                if self.conn.poll():  # its last words
                    break
                raise WorkerError(f"reasoner worker (pid {self.pid}) exited with code {self.proc.exitcode}")
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(1)
            raise WorkerError(f"reasoner worker (pid {self.pid}) died (exit code {self.proc.exitcode})") from None
        if kind == "error":
            raise WorkerError(f"reasoner worker (pid {self.pid}) failed:\n{payload}")
        return payload

    def send(self, message, share: bool = False) -> None:
        try:
            send_message(self.conn, message, share)
        except (OSError, ValueError):
            self.check()
            raise

    def close(self, graceful: bool = True, timeout: float = 5.0) -> None:
        """Ask the worker to exit (or kill it) and reap it; idempotent."""
        if graceful and self.proc.is_alive():
            try:
                send_message(self.conn, (CLOSE, None))
            except (OSError, ValueError):
                pass
            self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout)
        self.conn.close()
        _LIVE.discard(self)


_LIVE: "weakref.WeakSet[ReasonerProcess]" = weakref.WeakSet()


@atexit.register
def _close_live_workers() -> None:  # runs before multiprocessing's own exit handler
    for process in list(_LIVE):
        process.close()


def parent_alive_check(conn):
    """For the worker's waits during a job: raise once the parent is gone (its pipe end closed).

    Nothing is sent on the pipe while a job runs, so a readable pipe means end of file.
    """

    def check() -> None:
        if conn.poll():
            raise SystemExit("the decoding process went away")

    return check
