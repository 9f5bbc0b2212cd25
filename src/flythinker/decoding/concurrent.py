"""Think while generating: the Reasoner's step runs while the Generator's runs (docs/design.md#thinking-while-generating).

    step k:   G( E_G(s_n) + λρ·ẑ_{n-1} ) -> s_{n+1}    ‖    R( s_n ) -> z_n

The decoding loop (``loop.run``) drives the pair stepper (stepper.py), whose Reasoner handle
splits R's step in two: ``launch`` (start R on s_n and return at once) before G's step, and
``latent`` (wait for z_n) after it. Both halves compute exactly what the reference computes, so the tokens are the same;
only where R runs changes, and that is the backend:

  threads  R's step on a worker thread of this process (torch releases the GIL inside ops)
  streams  the same, with R's kernels on a side CUDA stream of G's GPU
  devices  the same, R and G on two devices (launches are asynchronous, they overlap)
  shm      R in a worker process; token and latent through shared memory (CPU fast path)
  gloo     R in a worker process; token and latent through torch.distributed (gloo)
  nccl     one model per process under torchrun: flythinker.decoding.distributed.launch
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import torch

from flythinker.decoding.loop import generate_sequential, reference_stepper, run
from flythinker.decoding.steps import ReasonerRunner
from flythinker.errors import UserError
from flythinker.lm import device_of

BACKENDS = ("auto", "threads", "streams", "devices", "shm", "gloo", "nccl")


def default_threads() -> int:
    """Intra-op threads per model when two models share this machine's cores."""
    return max(1, torch.get_num_threads() // 2)


class ThreadedReasoner:
    """R's runner on one worker thread; with ``side_stream`` its kernels go to a CUDA side stream.

    On CUDA the inputs are made on G's stream and the latent on R's: events order the two
    streams and ``record_stream`` keeps the caching allocator from reusing a tensor too early.
    """

    def __init__(self, side_stream: bool = False, threads: int | None = None):
        self.side_stream, self.threads = side_stream, threads
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="flythinker-reasoner")
        self.model = self.stream = self.runner = self.pending = None

    def bind(self, model) -> None:
        self.model = weakref.ref(model)  # the shared decoder must not keep a model alive
        if self.side_stream:
            self.stream = torch.cuda.Stream(device=device_of(model.reasoner))

    def _run(self, fn, args, ready):  # on the worker thread
        if self.stream is None:
            with torch.no_grad():
                return fn(*args), None
        with torch.no_grad(), torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            for a in args:
                if a.is_cuda:
                    a.record_stream(self.stream)
            out = fn(*args)
            done = torch.cuda.Event()
            done.record(self.stream)
        return out, done

    def _submit(self, fn, *args):
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.stream.device))
        self.pending = self.pool.submit(self._run, fn, args, ready)

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:  # (B, T, d_R)
        if self.runner is None:  # a running batch keeps its runner while rows join (the stepper merges caches)
            self.runner = ReasonerRunner(self.model())
        if self.threads:  # OpenMP's thread count is per calling thread: set the worker's too
            self.pool.submit(torch.set_num_threads, self.threads).result()
        self._submit(self.runner.prefill, input_ids, attention_mask, position_ids)
        return self.latent()

    def launch(self, tokens, attention_mask, position_ids) -> None:
        self._submit(self.runner.step, tokens, attention_mask, position_ids)

    def latent(self) -> torch.Tensor:  # (B, 1, d_R), or (B, T, d_R) after prefill
        pending, self.pending = self.pending, None
        out, done = pending.result()
        if done is not None:
            main = torch.cuda.current_stream(self.stream.device)
            main.wait_event(done)
            out.record_stream(main)
        return out

    def finish(self) -> None:
        if self.pending is not None:  # an error or Ctrl-C between launch and latent
            self.pending.exception()  # wait; its result no longer matters
            self.pending = None
        self.runner = None

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def threaded_handle(model, threads: int | None = None) -> ThreadedReasoner:
    """R's step on a worker thread for ``model`` (on a side CUDA stream when G and R share a GPU)."""
    g, r = device_of(model.generator), device_of(model.reasoner)
    handle = ThreadedReasoner(side_stream=g.type == "cuda" and g == r, threads=threads)
    handle.bind(model)
    return handle


def resolve_backend(model, backend: str | None) -> str:
    """The backend name to use for this model's devices; ``auto`` picks the fastest measured.

    >>> resolve_backend(model, "auto")  # CPU model  # doctest: +SKIP
    'shm'
    """
    g, r = device_of(model.generator), device_of(model.reasoner)
    name = "auto" if backend is None else backend
    if name not in BACKENDS:
        raise UserError(f"unknown concurrent backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if g != r:
            return "devices"
        return {"cuda": "streams", "cpu": "shm"}.get(g.type, "threads")
    where = f"(generator on {g}, reasoner on {r})"
    if name == "streams" and not (g.type == "cuda" and g == r):
        raise UserError(f"backend 'streams' needs both models on one CUDA device {where}; try 'auto'")
    if name == "devices" and g == r:
        raise UserError(f"backend 'devices' needs the models on two devices {where}; try 'auto'")
    if name in ("shm", "gloo") and not (g.type == "cpu" and r.type == "cpu"):
        raise UserError(f"backend {name!r} runs the reasoner in a CPU worker process {where}; try 'auto'")
    if name == "nccl":
        raise UserError(
            "backend 'nccl' runs one model per process: start 2 ranks with torchrun and use "
            "flythinker.decoding.distributed.launch(model) (see docs/decoding.md)"
        )
    return name


def weights_key(module) -> tuple:
    """Changes when a tensor of ``module`` is replaced (not when it is updated in place)."""
    return (module.training,) + tuple(
        (t.data_ptr(), t.dtype, t.device, tuple(t.shape)) for t in module.state_dict().values()
    )


class ConcurrentDecoder:
    """A concurrent decoder bound to a model; its worker (thread or process) lives until ``close``.

    ``model.generate(..., mode="concurrent")`` keeps one per backend for you; make your own to
    control its lifetime. Process backends keep the weights shared: in-place updates of R's
    weights are seen by the worker, a replaced tensor makes the next call reload R.

    >>> with ConcurrentDecoder(model, backend="shm") as dec:             # doctest: +SKIP
    ...     new = dec.generate(ids, attention_mask=mask, max_new_tokens=64)
    ...     same = model.generate(ids, attention_mask=mask, max_new_tokens=64,
    ...                           mode="concurrent", backend=dec)
    """

    def __init__(
        self,
        model,
        backend: str | None = "auto",
        threads_per_model: int | None = None,
        spin_s: float = 0.001,
        start_method: str = "forkserver",
    ):
        self.backend = resolve_backend(model, backend)
        on_cpu = device_of(model.generator).type == "cpu"
        self.threads = (threads_per_model or default_threads()) if on_cpu else None
        self.spin_s, self.start_method = spin_s, start_method
        self.lock = threading.Lock()  # one decode at a time: the worker holds one R cache
        self.closed, self.rebindable = False, True
        self.reasoner, self._model, self._key = None, None, None
        try:
            self.bind(model)
        except BaseException:
            self.close()
            raise

    @classmethod
    def around(cls, model, reasoner, backend: str) -> "ConcurrentDecoder":
        """A decoder over a reasoner handle made elsewhere (``distributed.launch``); not rebindable."""
        self = cls.__new__(cls)
        self.backend, self.threads, self.reasoner = backend, None, reasoner
        self.lock, self.closed, self.rebindable = threading.Lock(), False, False
        self._model, self._key = weakref.ref(model), None
        return self

    def _start(self, model):
        """A fresh Reasoner handle (and worker) for this backend."""
        if self.backend in ("threads", "streams", "devices"):
            return ThreadedReasoner(side_stream=self.backend == "streams", threads=self.threads)
        preload = [type(model.reasoner).__module__]  # the worker imports it once, in the fork server
        if self.backend == "shm":
            from flythinker.decoding.shm import start_shm_reasoner

            return start_shm_reasoner(self.spin_s, self.start_method, self.threads, preload)
        from flythinker.decoding.dist_link import start_gloo_reasoner

        return start_gloo_reasoner(self.start_method, self.threads, preload)

    @property
    def model(self):
        return self._model() if self._model is not None else None

    def bind(self, model) -> None:
        """Decode for ``model`` from now on (a process worker receives R's weights again)."""
        if (
            self.reasoner is not None
            and self.model is model
            and (not self.rebindable or weights_key(model.reasoner) == self._key)
        ):
            return
        if not self.rebindable:
            raise UserError("this decoder was launched for another model (or lost its peer); launch a new one")
        if resolve_backend(model, self.backend) != self.backend:  # raises if it cannot run
            raise UserError(f"this decoder runs backend {self.backend!r}, which does not fit this model")
        if self.reasoner is None:
            self.reasoner = self._start(model)
        self.reasoner.bind(model)
        self._model, self._key = weakref.ref(model), weights_key(model.reasoner)

    def decode(
        self,
        input_ids,
        attention_mask,
        max_new_tokens,
        sampling,
        eos_token_id,
        pad_token_id,
        streamer=None,
        reasoner_prompt=None,
    ):
        """The arguments of ``flythinker.decoding.decode`` (``reasoner_prompt``: R's own left-padded
        ``(ids, mask)`` for the separate-prompts variant); returns the new tokens (B, T_new)."""
        if self.closed:
            raise UserError("this ConcurrentDecoder is closed")
        with self.lock:
            model = self.model
            self.bind(model)  # restarts a worker lost to an error or a Ctrl-C in the middle of a step
            previous = torch.get_num_threads()
            try:
                if self.threads:
                    torch.set_num_threads(self.threads)
                return run(
                    reference_stepper(model, reasoner_prompt, handle=self.reasoner),
                    input_ids,
                    attention_mask,
                    max_new_tokens,
                    sampling,
                    eos_token_id,
                    pad_token_id,
                    streamer,
                )
            except BaseException:
                if getattr(self.reasoner, "broken", False):  # dead or out of step: start afresh next time
                    self.reasoner.close()
                    self.reasoner = None
                raise
            finally:
                torch.set_num_threads(previous)

    def generate(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:  # (B, T_new)
        """``model.generate`` with this decoder; same keyword arguments."""
        from flythinker.decoding.dispatch import generate

        return generate(self.model, input_ids, attention_mask, mode="concurrent", backend=self, **kwargs)

    def close(self) -> None:
        """Stop the worker (idempotent); a process worker is joined, killed if it does not exit."""
        if not self.closed:
            self.closed = True
            if self.reasoner is not None:
                self.reasoner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_SHARED: dict[str, ConcurrentDecoder] = {}  # backend -> the decoder model.generate reuses


def shared_decoder(model, backend: str | None) -> ConcurrentDecoder:
    """The decoder ``model.generate(mode="concurrent")`` uses: one per backend, rebound as needed."""
    name = resolve_backend(model, backend)
    decoder = _SHARED.get(name)
    if decoder is None or decoder.closed:
        decoder = _SHARED[name] = ConcurrentDecoder(model, name)
    decoder.bind(model)
    return decoder


def close_shared_decoders() -> None:
    """Stop the workers that ``model.generate(mode="concurrent")`` keeps (also run at exit)."""
    while _SHARED:
        _SHARED.popitem()[1].close()


def generate_concurrent(
    model,
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, T)
    max_new_tokens: int,
    sampling,
    eos_token_id: list[int],
    pad_token_id: int,
    streamer=None,
    backend: str | ConcurrentDecoder | None = None,
    reasoner_prompt=None,  # R's own (ids, mask): the separate-prompts variant
) -> torch.Tensor:  # (B, T_new)
    """Entry point of ``decode(mode="concurrent")``; ``backend`` is a name or a ConcurrentDecoder."""
    args = (model, input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer)
    if model.reasoning in ("never", "once"):  # SFT, or R runs once: nothing to overlap
        resolve_backend(model, backend if isinstance(backend, str) else None)  # still refuse a bad name
        return generate_sequential(*args, reasoner_prompt=reasoner_prompt)
    if isinstance(backend, ConcurrentDecoder):
        decoder = backend
        decoder.bind(model)
    else:
        decoder = shared_decoder(model, backend)
    return decoder.decode(*args[1:], reasoner_prompt)
