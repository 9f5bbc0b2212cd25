"""The decoding engine of the server: one thread owns the model and decodes queued requests in
shared batches, streaming each row's tokens to its request as they are produced.

Requests with the same sampling settings are decoded together (left padding, per-row EOS and
token budgets; a row whose request ended or whose client went away is dropped from the output,
and the batch stops as soon as every row has ended). Rows join at the next batch, not in the
middle of one (continuous batching is not built yet). A request with a ``seed`` is decoded on its
own, so the same seed gives the same tokens as ``model.generate`` with that seed.

    >>> engine = Engine(model, tokenizer)                                     # doctest: +SKIP
    >>> req = engine.submit(prompt_ids, max_tokens=64, temperature=0.8, top_p=0.95)  # doctest: +SKIP
    >>> for token in req.tokens(): ...                                        # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field

import torch

_END = object()  # the end of a request's token stream


class QueueFull(Exception):
    """The engine's queue is full: the client should retry later."""


class _AllRowsEnded(Exception):
    """Raised inside a decode once no row has a reader left."""


@dataclass
class Request:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish_reason: str | None = None
    n_tokens: int = 0

    def key(self, serial: int):
        """Requests with equal keys share a batch (a seeded request shares with no one)."""
        return (self.temperature, self.top_p) if self.seed is None else ("seed", serial)

    def tokens(self, timeout: float = 600.0):
        """The request's token ids as they come; raises the decode's error if it failed."""
        while True:
            item = self.out.get(timeout=timeout)
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        """The client went away: its row stops being read (and ends the batch if it was the last)."""
        self.cancelled.set()


class _Fanout:
    """transformers' streamer protocol, routing each row's new token to its request."""

    def __init__(self, requests: list[Request], eos: set[int]):
        self.requests, self.eos, self.first = requests, eos, True
        self.done = [False] * len(requests)

    def put(self, value: torch.Tensor) -> None:
        if self.first:  # the prompt
            self.first = False
            return
        for i, (req, tok) in enumerate(zip(self.requests, value.tolist())):
            if self.done[i]:
                continue
            if req.cancelled.is_set():
                self._end(i, "cancelled")
            elif tok in self.eos:
                self._end(i, "stop")
            else:
                req.n_tokens += 1
                req.out.put(tok)
                if req.n_tokens >= req.max_tokens:
                    self._end(i, "length")
        if all(self.done):
            raise _AllRowsEnded()

    def _end(self, i: int, reason: str) -> None:
        self.done[i] = True
        self.requests[i].finish_reason = reason
        self.requests[i].out.put(_END)

    def end(self) -> None:
        for i in range(len(self.requests)):
            if not self.done[i]:
                self._end(i, "length")


class Engine:
    """Owns the model; ``submit`` queues a request, a worker thread decodes batches of them."""

    def __init__(self, model, tokenizer, max_batch: int = 8, max_queue: int = 64, mode: str = "concurrent"):
        self.model, self.tokenizer, self.max_batch, self.mode = model, tokenizer, max_batch, mode
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._serial = itertools.count()
        self._stop = threading.Event()
        self._waiting: list[Request] = []
        self.thread = threading.Thread(target=self._loop, name="flythinker-engine", daemon=True)
        self.thread.start()

    def submit(self, prompt_ids: list[int], max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None) -> Request:
        req = Request(list(prompt_ids), max_tokens, temperature, top_p, seed)
        try:
            self.queue.put_nowait(req)
        except queue.Full:
            raise QueueFull() from None
        return req

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued and decoding, then stop the worker."""
        self._stop.set()
        self.thread.join(timeout)

    # --- the worker ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not (self._stop.is_set() and self.queue.empty() and not self._waiting):
            batch = self._next_batch()
            if batch:
                self._decode(batch)

    def _next_batch(self) -> list[Request]:
        """The oldest waiting request and every queued one that can share its batch."""
        try:
            while True:
                self._waiting.append(self.queue.get(timeout=0.05 if not self._waiting else 0.0))
        except queue.Empty:
            pass
        for r in [r for r in self._waiting if r.cancelled.is_set()]:  # gone before their turn
            r.finish_reason = "cancelled"
            r.out.put(_END)
        self._waiting = [r for r in self._waiting if not r.cancelled.is_set()]
        if not self._waiting:
            return []
        serials = {id(r): next(self._serial) for r in self._waiting}
        key = self._waiting[0].key(serials[id(self._waiting[0])])
        batch = [r for r in self._waiting if r.key(serials[id(r)]) == key][: self.max_batch]
        self._waiting = [r for r in self._waiting if r not in batch]
        return batch

    def _decode(self, batch: list[Request]) -> None:
        T = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), T), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding
            ids[i, T - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, T - len(r.prompt_ids):] = 1
        first = batch[0]
        fanout = _Fanout(batch, self.eos)
        try:
            self.model.generate(
                ids, attention_mask=mask, max_new_tokens=max(r.max_tokens for r in batch),
                do_sample=first.temperature > 0, temperature=first.temperature or 1.0, top_p=first.top_p,
                seed=first.seed, eos_token_id=sorted(self.eos), pad_token_id=self.pad, streamer=fanout, mode=self.mode)
        except _AllRowsEnded:
            pass
        except Exception as e:  # noqa: BLE001  every waiting client gets the error, the engine goes on
            for i, r in enumerate(batch):
                if not fanout.done[i]:
                    fanout.done[i] = True
                    r.out.put(RuntimeError(f"decoding failed: {e}"))
        fanout.end()
