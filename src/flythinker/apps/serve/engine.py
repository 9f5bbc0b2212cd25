"""The decoding engine of the server: one thread owns the model and decodes every request in
one running batch (continuous batching), streaming each row's tokens to its request.

Between two decoding steps, waiting requests join the batch (their prompts are prefilled and
their KV caches merged into the running ones: the stepper of the mode, made by
:func:`flythinker.decoding.make_stepper`, the one step every decoder runs)
and rows that ended leave it: at EOS, at their token budget, or when their client went away.
Rows keep their own sampling settings. A request with a ``seed`` joins the running batch like any
other; its row samples with a generator of its own, so the same seed gives the same tokens as
``model.generate`` with that seed.

    >>> engine = Engine(model, tokenizer)                                     # doctest: +SKIP
    >>> req = engine.submit(prompt_ids, max_tokens=64, temperature=0.8, top_p=0.95)  # doctest: +SKIP
    >>> for token in req.tokens(): ...                                        # doctest: +SKIP
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass, field

import torch

from flythinker.choices import ServeMode
from flythinker.decoding.sampling import SamplingConfig, TokenSampler
from flythinker.errors import UserError
from flythinker.lm import eos_ids

_END = object()  # the end of a request's token stream


def check_sampling(temperature: float, top_p: float) -> None:
    """Refuse sampling settings no engine can use (the server's engines share this rule)."""
    if not (math.isfinite(temperature) and temperature >= 0 and math.isfinite(top_p) and 0 < top_p <= 1):
        raise UserError(f"temperature must be a finite number >= 0 and top_p in (0, 1], got {temperature}, {top_p}")


class QueueFull(Exception):
    """The engine's queue is full: the client should retry later."""


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
    sampler: TokenSampler | None = None
    waiter: tuple | None = None  # (event loop, asyncio.Event) of an async route reading this request

    def put(self, item) -> None:
        """The engine thread hands over a token, an error or the end; wakes an async reader."""
        self.out.put(item)
        if self.waiter is not None:
            loop, event = self.waiter
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the reader's event loop has closed: nobody reads this request
                self.cancelled.set()

    async def atokens(self, keepalive: float | None = None):
        """The token ids as they come, for an async route: no thread waits. Yields None every
        ``keepalive`` seconds without a token (a stream's keep-alive comment)."""
        import asyncio

        event = asyncio.Event()
        self.waiter = (asyncio.get_running_loop(), event)
        while True:
            try:
                item = self.out.get_nowait()
            except queue.Empty:
                event.clear()
                if not self.out.empty():
                    continue
                try:
                    await asyncio.wait_for(event.wait(), keepalive)
                except asyncio.TimeoutError:
                    yield None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            do_sample=self.temperature > 0, temperature=self.temperature or 1.0, top_p=self.top_p, seed=self.seed
        )

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
        """The client went away: its row leaves the batch at the next step."""
        self.cancelled.set()

    def end(self, reason: str) -> None:
        self.finish_reason = reason
        self.put(_END)


class Engine:
    """Owns the model; ``submit`` queues a request, a worker thread runs the batch.

    ``mode`` is ``concurrent`` (R's step on a thread while G's runs), ``sequential``, ``auto``
    (concurrent on a GPU, sequential on a CPU) or ``shared_base`` (G and R one base: one forward a step);
    ``make_batch`` builds the running batch (tests pass a fake one).
    """

    def __init__(self, model, tokenizer, max_batch: int = 8, max_queue: int = 64, mode: str = "auto", make_batch=None):
        from flythinker.decoding.concurrent import default_threads
        from flythinker.lm import device_of

        if getattr(model, "reasoning", None) == "own_prompt":
            raise UserError(
                "this model's R reads its own prompt (trained with profile_in: reasoner) and the server builds "
                "one prompt per request: decode it with `flythinker generate`"
            )
        self.model, self.tokenizer, self.max_batch, self.mode = model, tokenizer, max_batch, mode
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        # the tokenizer's EOS and every one of the generation config's (a test's batch may have no model)
        self.eos = set(eos_ids(getattr(model, "generator", None), tokenizer))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if mode not in (modes := tuple(m.value for m in ServeMode)):
            raise UserError(f"mode must be one of {modes}, got {mode!r}")
        device = None if make_batch is not None else device_of(model.generator).type  # None: a test's batch
        if mode == "shared_base" and make_batch is None:  # refuse at start, not at the first request
            from flythinker.decoding.shared_base import unshared_reason

            if (reason := unshared_reason(model)) is not None:
                raise UserError(f"--mode shared_base needs G and R to share one base: {reason}")
        if mode == "auto":  # overlap where it pays: on a GPU (on this project's CPU, each model on
            # every core one after the other served faster than one core each at once; docs/serving.md)
            mode = self.mode = "concurrent" if device == "cuda" else "sequential"
        self.threads = None  # two models overlapping on the CPU's cores get half of them each
        if device == "cpu" and mode == "concurrent" and model.reasoning == "every_token":
            self.threads = default_threads()
        self.make_batch = make_batch or self._running_batch
        self._stop = threading.Event()
        self._waiting: list[Request] = []  # taken from the queue, not yet in the batch (≤ max_batch)
        self.rows: list[Request] = []
        self.stats = {"steps": 0, "peak_rows": 0, "joined_running": 0}  # joined_running: rows that joined mid-decode
        self.thread = threading.Thread(target=self._loop, name="flythinker-engine", daemon=True)
        self.thread.start()

    def _running_batch(self):
        from flythinker.decoding import make_stepper

        return make_stepper(self.model, self.mode, self.threads)

    def submit(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Request:
        check_sampling(temperature, top_p)
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
        if self.threads:
            torch.set_num_threads(self.threads)
        batch, logits = self.make_batch(), None
        try:
            while not (self._stop.is_set() and self.queue.empty() and not self._waiting and not self.rows):
                self._collect(block=not self.rows)
                logits = self._admit(batch, logits)
                if not self.rows:
                    continue
                try:
                    tokens = self._sample(logits)
                    keep = self._emit(tokens)
                    if len(keep) < len(self.rows):
                        batch.keep(torch.tensor(keep, dtype=torch.long))
                        self.rows, tokens = [self.rows[i] for i in keep], tokens[keep]
                    logits = batch.step(tokens) if self.rows else None
                    self.stats["steps"] += bool(self.rows)
                except Exception as e:  # noqa: BLE001  every row gets the error, the engine goes on
                    self._fail(self.rows, e)
                    self.rows, logits = [], None
                    batch.keep(torch.zeros(0, dtype=torch.long))
        finally:
            batch.close()

    def _collect(self, block: bool) -> None:
        """Move queued requests to the waiting list (at most ``max_batch`` wait there)."""
        try:
            while len(self._waiting) < self.max_batch:
                wait = block and not self._waiting
                self._waiting.append(self.queue.get(timeout=0.05) if wait else self.queue.get_nowait())
        except queue.Empty:
            pass
        for r in [r for r in self._waiting if r.cancelled.is_set()]:  # gone before their turn
            r.end("cancelled")
        self._waiting = [r for r in self._waiting if not r.cancelled.is_set()]

    def _admit(self, batch, logits):
        """Prefill the waiting requests that may join now; returns every row's logits. A seeded
        request joins like any other: its row samples with its own generator (``_sample``)."""
        new = []
        for r in self._waiting:
            if len(self.rows) + len(new) >= self.max_batch:
                break
            new.append(r)
        if not new:
            return logits
        self._waiting = self._waiting[len(new) :]
        try:
            new_logits = batch.add_prompts([r.prompt_ids for r in new], self.pad)
        except Exception as e:  # noqa: BLE001
            self._fail(new, e)
            return logits
        for r in new:
            r.sampler = TokenSampler(r.sampling(), device=new_logits.device)
        self.stats["joined_running"] += len(new) if self.rows else 0
        self.rows += new
        self.stats["peak_rows"] = max(self.stats["peak_rows"], len(self.rows))
        return new_logits if logits is None else torch.cat([logits, new_logits.to(logits.device)])

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,)
        """Each row's next token with its own settings; rows with equal settings sample together."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(self.rows):
            groups.setdefault((r.temperature, r.top_p) if r.seed is None else ("seed", i), []).append(i)
        tokens = torch.empty(len(self.rows), dtype=torch.long)
        for rows in groups.values():
            idx = torch.tensor(rows)
            picked = logits[idx.to(logits.device)]
            tokens[idx] = self.rows[rows[0]].sampler(picked, torch.empty(len(rows), 0, dtype=torch.long)).cpu()
        return tokens

    def _emit(self, tokens: torch.Tensor) -> list[int]:
        """Send each row its token; returns the rows that go on."""
        keep = []
        for i, (req, tok) in enumerate(zip(self.rows, tokens.tolist())):
            if req.cancelled.is_set():
                req.end("cancelled")
            elif tok in self.eos:
                req.end("stop")
            else:
                req.n_tokens += 1
                req.put(tok)
                if req.n_tokens >= req.max_tokens:
                    req.end("length")
                else:
                    keep.append(i)
        return keep

    @staticmethod
    def _fail(requests: list[Request], error: Exception) -> None:
        for r in requests:
            r.put(RuntimeError(f"decoding failed: {error}"))
