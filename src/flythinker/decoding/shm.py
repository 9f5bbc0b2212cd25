"""CPU fast path: R in a worker process, token and latent exchanged through shared memory.

Per step the Generator writes s_n into a shared buffer and posts a semaphore; the Reasoner
writes z_n into another and posts back. Each side spins on its semaphore (``sem_trywait``,
no system call) for at most ``spin_s`` (1 ms) and then sleeps in a blocking wait: a step
costs ≈ max(T_G, T_R) plus microseconds, and no core spins while the other side computes
for long, between decodes or after them. (On a machine whose cores are all busy, spinning
only takes time from the process it waits for, hence the short bound.) Jobs, prompt latents
and R's weights go through the control pipe; torch shares tensors by file descriptor, so
nothing named is left in /dev/shm but the two semaphores, removed with the decoder.

    >>> dec = ConcurrentDecoder(model, backend="shm")   # doctest: +SKIP
"""

from __future__ import annotations

import time

import torch

from flythinker.decoding.worker import (
    JOB,
    LOAD,
    STEP,
    STOP,
    ReasonerProcess,
    RemoteReasoner,
    context,
    parent_alive_check,
    send_message,
)


class ShmLink:
    """Both ends of the shared-memory link; ``send(message, share)``/``recv()`` use the pipe.

    The step buffers are made once (by the side that writes them) and sent as shared memory;
    a job that needs more room makes a bigger one.
    """

    def __init__(self, tokens_ready, latent_ready, spin_s: float, send, recv, alive):
        self.tokens_ready, self.latent_ready = tokens_ready, latent_ready
        self.spin_s, self.send, self.recv, self.alive = spin_s, send, recv, alive
        self.tokens: torch.Tensor | None = None  # (≥ 1 + B,) int64: [STEP|STOP, s_n per row]
        self.latent: torch.Tensor | None = None  # (≥ B·d_R,) flat, in R's dtype
        self.batch, self.latent_shape = 0, None

    def _wait(self, semaphore) -> None:
        deadline = time.perf_counter() + self.spin_s
        while not semaphore.acquire(False):
            if time.perf_counter() > deadline:  # nothing soon: sleep, and check the peer now and then
                while not semaphore.acquire(True, 0.05):
                    self.alive()
                return

    # --- the Generator's end ---------------------------------------------------------------
    def send_command(self, command, payload=None) -> None:
        if command != JOB:
            self.send((command, payload), share=command == LOAD)
            return
        input_ids, attention_mask, threads = payload
        self.batch = input_ids.shape[0]
        grow = self.tokens is None or self.tokens.numel() < self.batch + 1
        self.send((JOB, (input_ids, attention_mask, threads, grow)))
        if grow:
            self.tokens = torch.zeros(self.batch + 1, dtype=torch.long).share_memory_()
            self.send(self.tokens, share=True)

    def recv_prefill(self) -> torch.Tensor:  # (B, T, d_R)
        latents, grow = self.recv()
        if grow:
            self.latent = self.recv()
        self.latent_shape = (self.batch, 1, latents.shape[-1])
        return latents

    def send_tokens(self, tokens: torch.Tensor) -> None:  # (B,)
        self.tokens[1 : self.batch + 1].copy_(tokens)
        self.tokens[0] = STEP
        self.tokens_ready.release()

    def send_stop(self) -> None:
        self.tokens[0] = STOP
        self.tokens_ready.release()

    def recv_latent(self) -> torch.Tensor:  # (B, 1, d_R)
        self._wait(self.latent_ready)
        # a copy: the buffer is R's again as soon as G sends the next token
        return self.latent[: self.batch * self.latent_shape[-1]].view(self.latent_shape).clone()

    # --- the Reasoner's end ----------------------------------------------------------------
    def recv_command(self):
        command, payload = self.recv()
        if command == JOB:
            input_ids, attention_mask, threads, grow = payload
            if grow:
                self.tokens = self.recv()
            self.batch, payload = input_ids.shape[0], (input_ids, attention_mask, threads)
        return command, payload

    def send_prefill(self, latents: torch.Tensor) -> None:  # (B, T, d_R)
        self.latent_shape = (self.batch, 1, latents.shape[-1])
        size = self.batch * latents.shape[-1]
        grow = self.latent is None or self.latent.dtype != latents.dtype or self.latent.numel() < size
        self.send((latents, grow))
        if grow:
            self.latent = torch.empty(size, dtype=latents.dtype).share_memory_()
            self.send(self.latent, share=True)

    def recv_tokens(self) -> torch.Tensor | None:  # (B,), None once G says stop
        self._wait(self.tokens_ready)
        return None if int(self.tokens[0]) == STOP else self.tokens[1 : self.batch + 1].clone()

    def send_latent(self, latent: torch.Tensor) -> None:  # (B, 1, d_R)
        self.latent[: latent.numel()].copy_(latent.reshape(-1))
        self.latent_ready.release()


def _reasoner_end(conn, tokens_ready, latent_ready, spin_s) -> ShmLink:  # runs in the worker
    def send(message, share=False):  # G reads ("ok", message) or ("error", traceback)
        send_message(conn, ("ok", message), share)

    return ShmLink(tokens_ready, latent_ready, spin_s, send=send, recv=conn.recv, alive=parent_alive_check(conn))


def start_shm_reasoner(
    spin_s: float = 0.001, start_method: str = "forkserver", threads: int | None = None, preload: list[str] = ()
) -> RemoteReasoner:
    """Start a worker process for R; returns G's handle on it (bind a model before decoding)."""
    ctx = context(start_method, preload)
    tokens_ready, latent_ready = ctx.Semaphore(0), ctx.Semaphore(0)
    process = ReasonerProcess(_reasoner_end, (tokens_ready, latent_ready, spin_s), ctx)
    link = ShmLink(tokens_ready, latent_ready, spin_s, send=process.send, recv=process.recv, alive=process.check)
    return RemoteReasoner(link, process, threads)
