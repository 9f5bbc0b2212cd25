"""The G↔R link over torch.distributed point-to-point send/recv, and the CPU gloo worker.

The same link serves two setups: a worker process of our own joined by a private 2-rank gloo
group (``start_gloo_reasoner``, the ``gloo`` backend of ``ConcurrentDecoder``), and one model
per rank under torchrun (``flythinker.decoding.distributed.launch``, NCCL on GPUs).
"""

from __future__ import annotations

import datetime
import threading

import torch
import torch.distributed as dist

from flythinker.decoding.worker import JOB, LOAD, STEP, STOP, ReasonerProcess, RemoteReasoner, context
from flythinker.errors import UserError

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]  # latents' dtype, by index
TIMEOUT = datetime.timedelta(minutes=30)


class DistLink:
    """One end of the G↔R link over torch.distributed point-to-point send/recv.

    ``pg``: a process group object of our own (the spawned gloo worker); otherwise ``dist.send``
    in ``group``. ``send``/``recv``: a control pipe for commands (the spawned worker); otherwise
    commands go over torch.distributed too. ``alive`` turns a broken connection into a clear error.
    """

    def __init__(self, peer: int, device, pg=None, group=None, send=None, recv=None, alive=None):
        self.peer, self.device, self.pg, self.group = peer, torch.device(device), pg, group
        self.send, self.recv, self.alive = send, recv, alive
        self.batch, self.latent_shape, self.dtype = 0, None, None

    def _io(self, op, tensor: torch.Tensor) -> torch.Tensor:
        try:
            if self.pg is not None:
                getattr(self.pg, op)([tensor], self.peer, 0).wait()
            else:
                getattr(dist, op)(tensor, self.peer, group=self.group)
        except RuntimeError:
            if self.alive is not None:
                self.alive()  # raises the worker's own error if it has one
            raise
        return tensor

    def _send(self, tensor: torch.Tensor) -> None:
        self._io("send", tensor.to(self.device).contiguous())

    def _recv(self, shape, dtype=torch.long) -> torch.Tensor:
        return self._io("recv", torch.empty(shape, dtype=dtype, device=self.device))

    # --- the Generator's end ---------------------------------------------------------------
    def send_command(self, command, payload=None) -> None:
        if command == JOB:
            self.batch = payload[0].shape[0]
        if self.send is not None:
            self.send((command, payload), share=command == LOAD)
            return
        if command == LOAD:
            raise UserError("a torchrun decoder serves the model each rank loaded; it cannot load another")
        B, T = payload[0].shape if command == JOB else (0, 0)
        threads = (payload[2] or 0) if command == JOB else 0
        self._send(torch.tensor([command, B, T, threads]))
        if command == JOB:
            self._send(payload[0])
            self._send(payload[1])

    def recv_prefill(self) -> torch.Tensor:  # (B, T, d_R)
        d, code, T = self._recv((3,)).tolist()
        self.dtype, self.latent_shape = DTYPES[code], (self.batch, 1, d)
        return self._recv((self.batch, T, d), self.dtype)

    def send_tokens(self, tokens: torch.Tensor) -> None:  # (B,)
        message = torch.empty(self.batch + 1, dtype=torch.long, device=self.device)
        message[0] = STEP
        message[1:] = tokens
        self._send(message)

    def send_stop(self) -> None:
        self._send(torch.full((self.batch + 1,), STOP, dtype=torch.long))

    def recv_latent(self) -> torch.Tensor:  # (B, 1, d_R)
        return self._recv(self.latent_shape, self.dtype)

    # --- the Reasoner's end ----------------------------------------------------------------
    def recv_command(self):
        if self.recv is not None:
            command, payload = self.recv()
        else:
            command, B, T, threads = self._recv((4,)).tolist()
            payload = (self._recv((B, T)), self._recv((B, T)), threads) if command == JOB else None
        if command == JOB:
            self.batch = payload[0].shape[0]
        return command, payload

    def send_prefill(self, latents: torch.Tensor) -> None:  # (B, T, d_R)
        self._send(torch.tensor([latents.shape[-1], DTYPES.index(latents.dtype), latents.shape[1]]))
        self._send(latents)

    def recv_tokens(self) -> torch.Tensor | None:  # (B,), None once G says stop
        message = self._recv((self.batch + 1,))
        return None if int(message[0]) == STOP else message[1:]

    def send_latent(self, latent: torch.Tensor) -> None:  # (B, 1, d_R)
        self._send(latent)


# --- gloo on one machine: a worker process of our own --------------------------------------------
def _reasoner_end(conn, port: int) -> DistLink:  # runs in the worker
    store = dist.TCPStore("127.0.0.1", port, 2, False, timeout=datetime.timedelta(seconds=60))
    pg = dist.ProcessGroupGloo(store, 1, 2, TIMEOUT)
    return DistLink(0, "cpu", pg=pg, recv=conn.recv)  # commands come on the pipe, data over gloo


def start_gloo_reasoner(
    start_method: str = "forkserver", threads: int | None = None, preload: list[str] = ()
) -> RemoteReasoner:
    """Start a worker process for R joined to this one by a private 2-rank gloo group."""
    store = dist.TCPStore("127.0.0.1", 0, 2, True, timeout=datetime.timedelta(seconds=60), wait_for_workers=False)
    made: dict = {}
    # both ends must join for either constructor to return: build ours while the worker starts
    joiner = threading.Thread(target=lambda: made.update(pg=dist.ProcessGroupGloo(store, 0, 2, TIMEOUT)), daemon=True)
    joiner.start()
    process = ReasonerProcess(_reasoner_end, (store.port,), context(start_method, preload))
    joiner.join()
    if "pg" not in made:
        process.close(graceful=False)
        raise RuntimeError("could not join the reasoner worker's gloo group")
    link = DistLink(1, "cpu", pg=made["pg"], send=process.send, recv=process.recv, alive=process.check)
    return RemoteReasoner(link, process, threads)
