"""Captured decoding: static KV caches and one recorded decode step for R and G together.

The reference loop grows its caches and masks every token and runs Python for every layer, so
on a GPU a step costs its kernel launches rather than its weights. Here each model gets a static
KV cache (:class:`StaticKV`: columns 0..T-1 the prompt, column T+k the token of step k), the
attention mask is a device buffer, and one step

    index += 1; pos += 1; mask the new column in
    z_n    = R(s_n)                         (R's static cache)
    logits = G(E_G(s_n) + λρ·ẑ_{n-1})       (G's static cache)
    ẑ      ← z_n                            (the hand-over stays on the device)

is recorded once per (batch, length) as a CUDA graph and replayed for every token. The decoding
loop (loop.py) drives it as it drives every stepper (:class:`CapturedStepper`); nothing in a step
reads a value back to the host: the token is chosen on the device after the replay, finished rows
get ``pad``, and the loop reads EOS back every ``check_every`` tokens, its output cut where a check
every token would have stopped.

On a CPU the same static step runs eagerly: the exactness path tested against the reference decoder
(graphs: under the ``gpu`` marker). Models whose attention is not a causal mask over the whole text
(a window shorter than it, flash kernels) go to the reference loop. ``overlap=True`` is withdrawn.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from contextlib import nullcontext

import torch

from flythinker.decoding.caches import StaticKV
from flythinker.decoding.loop import fall_back, generate_sequential, run
from flythinker.decoding.steps import shared_forward
from flythinker.errors import UserError
from flythinker.lm import backbone, cache_argument, device_of, positions_from_mask, sliding_window

OVERLAP_WITHDRAWN = (
    "CapturedDecoder(overlap=True) is withdrawn until it is fixed: R on a second stream inside the "
    "recorded step ended in an illegal memory access on an H200; use overlap=False (the default), "
    "or mode='concurrent' with backend='streams' to overlap R and G"
)
BUCKET = 256  # static lengths are rounded up to this: one recorded step serves many prompt lengths


def unsupported_reason(model, length: int) -> str | None:
    """Why ``model`` cannot be decoded with static caches of ``length`` columns (None: it can)."""
    for name, lm in (("generator", model.generator), ("reasoner", model.reasoner)):
        cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        attn = getattr(cfg, "_attn_implementation", None) or "eager"
        if attn not in ("eager", "sdpa"):
            return f"the {name}'s attention {attn!r} takes no 4-D mask"
        window = sliding_window(cfg)
        if window and length > window:
            return f"the {name}'s sliding window ({window}) is shorter than the text ({length} tokens)"
        if device_of(lm).type not in ("cpu", "cuda"):
            return f"the {name} is on {device_of(lm)}"
    if device_of(model.generator) != device_of(model.reasoner):
        return "the generator and the reasoner are on different devices"
    return None


def _into(buffer: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """``value`` copied into ``buffer`` (the address a recorded step reads), made on first use."""
    if buffer is None or buffer.shape != value.shape:
        return value.clone()
    return buffer.copy_(value)


class _Slots:
    """Static caches, buffers and the recorded step for one (batch, length) shape."""

    def __init__(self, model, batch: int, length: int, with_reasoner: bool, shared: bool = False):
        self.model = weakref.ref(model)  # the model owns these slots through the shared table, not back
        self.batch, self.length, self.with_reasoner, self.shared = batch, length, with_reasoner, shared
        self.fusion = model.fusion
        self.device = device_of(model.generator)
        self.embed = model.generator.get_input_embeddings()
        self.rho = model.rho().to(self.device)
        self.g_net, self.r_net = model.generator, backbone(model.reasoner)
        self.g_arg, self.r_arg = cache_argument(model.generator), cache_argument(model.reasoner)
        self.g_kv, self.r_kv = StaticKV(length), StaticKV(length)
        self.row_adapters = None
        if shared:  # one cache of 2B rows, G's first; R's adapter on R's rows (shared_base.py)
            from flythinker.decoding.shared_base import RowAdapters

            self.g_kv = self.r_kv = StaticKV(length, batch=2 * batch)
            self.row_adapters, self.base = RowAdapters(model), backbone(model.generator)
        self.index = torch.zeros(1, dtype=torch.long, device=self.device)  # the column being written
        self.tok = torch.zeros(batch, dtype=torch.long, device=self.device)  # s_n
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=self.device)  # its position per row
        self.valid = torch.zeros(batch, length, dtype=torch.bool, device=self.device)  # key columns in use
        self.g_dtype = self.embed.weight.dtype
        self.r_dtype = model.reasoner.get_input_embeddings().weight.dtype
        self.latent = self.logits = None  # ẑ_{n-1} (B, 1, d_R) and G's last logits (B, V), fp32
        self.graph = None

    def mask(self, dtype, rows: torch.Tensor) -> torch.Tensor:
        """Additive 4-D mask (B, 1, Q, L) in ``dtype`` from a boolean (B, Q, L)."""
        return torch.zeros(rows.shape, dtype=dtype, device=self.device).masked_fill(~rows, torch.finfo(dtype).min)[
            :, None
        ]

    def prefill(self, input_ids, attention_mask) -> None:
        """Both prompts into the static caches (eager); sets the buffers the step reads."""
        T = input_ids.shape[1]
        position_ids = positions_from_mask(attention_mask)
        self.valid.zero_()
        self.valid[:, :T] = attention_mask.bool()
        causal = torch.ones(T, self.length, dtype=torch.bool, device=self.device).tril()
        # a pad column's query sees itself: no row of the mask is empty (CUDA kernels may answer NaN for
        # one, and a NaN key poisons every later layer); real tokens never read a pad column
        rows = (causal[None] & self.valid[:, None, :]) | torch.eye(
            T, self.length, dtype=torch.bool, device=self.device
        )[None]  # (B, T, L)
        self.g_kv.index = self.r_kv.index = torch.arange(T, device=self.device)
        latents = None
        if self.with_reasoner:
            self.r_kv.rows = slice(self.batch, 2 * self.batch) if self.shared else None
            out = self.r_net(
                input_ids=input_ids,
                attention_mask=self.mask(self.r_dtype, rows),
                position_ids=position_ids,
                **{self.r_arg: self.r_kv},
                use_cache=True,
            )
            latents = out.last_hidden_state  # (B, T, d_R)
            self.latent = _into(self.latent, latents[:, -1:])
        embeds = self.embed(input_ids)
        if latents is not None:
            embeds = self.model().place_latents(embeds, latents, attention_mask)
        self.g_kv.rows = slice(0, self.batch) if self.shared else None
        out = self.g_net(
            inputs_embeds=embeds,
            attention_mask=self.mask(self.g_dtype, rows),
            position_ids=position_ids,
            **{self.g_arg: self.g_kv},
            use_cache=True,
            logits_to_keep=1,
        )
        self.g_kv.index = self.r_kv.index = self.index
        self.g_kv.rows = self.r_kv.rows = None
        self.index.fill_(T - 1)
        self.pos.copy_(position_ids[:, -1:])
        self.logits = _into(self.logits, out.logits[:, -1].float())

    def step(self, side: torch.cuda.Stream | None = None) -> None:
        """One token: reads ``tok`` (s_n), writes ``logits`` and ``latent`` (what the graph records).

        With ``side`` (a CUDA stream), R's step runs there while G's runs on the current stream;
        the new latent is handed over only after both, so G always reads ẑ_{n-1}."""
        self.index.add_(1)
        self.pos.add_(1)
        self.valid.index_fill_(1, self.index, True)
        rows = self.valid[:, None, :]  # (B, 1, L)
        tokens = self.tok[:, None]
        if self.shared:
            return self._shared_step(rows, tokens)
        z = None
        if self.with_reasoner:
            main = torch.cuda.current_stream(self.device) if side is not None else None
            if side is not None:
                side.wait_stream(main)
            with torch.cuda.stream(side) if side is not None else nullcontext():
                z = self.r_net(
                    input_ids=tokens,
                    attention_mask=self.mask(self.r_dtype, rows),
                    position_ids=self.pos,
                    **{self.r_arg: self.r_kv},
                    use_cache=True,
                ).last_hidden_state
        embeds = self.embed(tokens)
        if self.latent is not None:
            embeds = self.fusion(embeds, self.latent, self.rho, torch.ones_like(tokens))
        out = self.g_net(
            inputs_embeds=embeds,
            attention_mask=self.mask(self.g_dtype, rows),
            position_ids=self.pos,
            **{self.g_arg: self.g_kv},
            use_cache=True,
        )
        self.logits.copy_(out.logits[:, -1])
        if z is not None:
            if side is not None:
                main.wait_stream(side)
            self.latent.copy_(z)

    def _shared_step(self, rows, tokens) -> None:
        """G's and R's rows of the step in one forward of the shared base (2B rows)."""
        logits, latent, _ = shared_forward(
            self.model(),
            self.base,
            self.embed,
            self.rho,
            tokens,
            self.latent,
            self.mask(self.g_dtype, rows),
            self.pos,
            {self.g_arg: self.g_kv},
        )
        self.logits.copy_(logits)
        self.latent.copy_(latent)

    def adapters(self):
        return self.row_adapters.active() if self.row_adapters is not None else nullcontext()

    def record(self, overlap: bool) -> None:
        """Record ``step`` as a CUDA graph (after one warm-up on a side stream; state restored);
        ``overlap`` puts R's kernels on a second stream inside the graph."""
        # the warm-up step moves every buffer it writes (the prefill's logits too): put them back
        buffers = [t for t in (self.index, self.pos, self.valid, self.latent, self.logits) if t is not None]
        saved = [t.clone() for t in buffers]
        warm, side = torch.cuda.Stream(self.device), torch.cuda.Stream(self.device) if overlap else None
        warm.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(warm), self.adapters():
            self.step(side)
        torch.cuda.current_stream(self.device).wait_stream(warm)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), self.adapters():
            self.step(side)
        for buf, value in zip(buffers, saved):
            buf.copy_(value)

    def run_step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            with self.adapters():
                self.step()


class CapturedDecoder:
    """Captured decoding bound to a model; recorded steps are kept per (batch, length) shape (the
    ``keep`` most recent: each holds two static caches) and reused while the weights stay put.

    >>> dec = CapturedDecoder(model)                                        # doctest: +SKIP
    >>> new = dec.generate(ids, attention_mask=mask, max_new_tokens=64)     # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        graphs: bool | None = None,
        overlap: bool = False,
        shared_base: bool = False,
        check_every: int = 8,
        keep: int = 2,
    ):
        self._model = weakref.ref(model)
        self.graphs = device_of(model.generator).type == "cuda" if graphs is None else graphs
        # R on a second stream inside the graph: withdrawn (the GPU queue's overlap task diagnoses it)
        if overlap and os.environ.get("FLYTHINKER_UNSAFE_OVERLAP") != "1":
            raise UserError(OVERLAP_WITHDRAWN)
        self.overlap = overlap
        # G's and R's rows in one forward of their shared base (shared_base.py), where they share one
        self.shared_base = shared_base
        self.check_every, self.keep = max(1, check_every), keep
        self.lock = threading.Lock()
        self.slots: OrderedDict = OrderedDict()

    @property
    def model(self):
        return self._model()

    def generate(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:  # (B, T_new)
        """``model.generate`` with this decoder; same keyword arguments."""
        from flythinker.decoding.dispatch import generate

        return generate(self.model, input_ids, attention_mask, mode="captured", backend=self, **kwargs)

    def _slots_for(self, batch: int, length: int) -> _Slots:
        from flythinker.decoding.concurrent import weights_key

        key = (batch, length, weights_key(self.model))
        if key not in self.slots:
            while len(self.slots) >= self.keep:
                self.slots.popitem(last=False)
            reasons = self.model.reasoning != "never"
            self.slots[key] = _Slots(self.model, batch, length, reasons, shared=self.shared_base)
        self.slots.move_to_end(key)
        return self.slots[key]

    def decode(self, input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer=None):
        """The arguments of ``flythinker.decoding.decode``; returns the new tokens (B, T_new)."""
        model = self.model
        args = (input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer)
        B, T = input_ids.shape
        length = -(-(T + max_new_tokens) // BUCKET) * BUCKET
        reason = unsupported_reason(model, length)
        if reason is None and model.reasoning == "once":
            reason = "R runs once over the prompt (the static variant)"
        if reason is None and self.shared_base:
            from flythinker.decoding.shared_base import unshared_reason

            reason = unshared_reason(model)
        if reason is not None:
            fall_back("captured", reason)
            return generate_sequential(model, *args)
        with self.lock, torch.no_grad():
            return run(CapturedStepper(self, self._slots_for(B, length)), *args)


class CapturedStepper:
    """The stepper (stepper.py) over one shape's static caches and recorded step: one batch, added
    once, decoded to its end (rows neither join nor leave: the shapes are fixed)."""

    def __init__(self, decoder: CapturedDecoder, slots: _Slots):
        self.decoder, self.slots, self.device = decoder, slots, slots.device
        self.check_every, self.size = decoder.check_every, 0

    def add(self, input_ids, attention_mask) -> torch.Tensor:  # (B, V) fp32
        if self.size:
            raise UserError("captured decoding runs one batch: rows cannot join it")
        self.size = input_ids.shape[0]
        self.slots.prefill(input_ids, attention_mask)
        if self.decoder.graphs and self.slots.graph is None:
            self.slots.record(self.decoder.overlap)
        return self.slots.logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, V), the buffer the step writes
        self.slots.tok.copy_(tokens)
        self.slots.run_step()
        return self.slots.logits

    def keep(self, rows) -> None:
        raise UserError("captured decoding runs one batch: rows cannot leave it")

    def finish(self) -> None:
        pass


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its CapturedDecoder
_SHARED_LOCK = threading.Lock()


def shared_captured(model) -> CapturedDecoder:
    """The decoder ``model.generate(mode="captured")`` reuses for ``model`` (dropped with it)."""
    with _SHARED_LOCK:
        decoder = _SHARED.get(model)
        if decoder is None:
            decoder = _SHARED[model] = CapturedDecoder(model)
        return decoder


def generate_captured(
    model,
    input_ids,
    attention_mask,
    max_new_tokens,
    sampling,
    eos_token_id,
    pad_token_id,
    streamer=None,
    backend=None,
    reasoner_prompt=None,
) -> torch.Tensor:
    """Entry point of ``decode(mode="captured")``; ``backend`` may be a :class:`CapturedDecoder`."""
    decoder = backend if isinstance(backend, CapturedDecoder) else shared_captured(model)
    return decoder.decode(input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer)
