"""Continuous batching: rows join a running decode and leave it between steps.

A :class:`RunningBatch` holds the Generator's and the Reasoner's KV caches for the rows decoding
now. ``add`` prefills new prompts (R, then G with R's latents placed as in training) and merges
their caches into the running ones, left-padding the shorter side; ``keep`` drops rows that
ended (and trims columns that only padding still fills); ``step`` runs one decoding step of
every row, R's step on a worker thread while G's runs (think while generating; on one GPU, R's
kernels go to a side CUDA stream, as the ``streams`` backend does) unless ``concurrent=False``.
The halves are the reference loop's runners (steps.py), with the same positions, masks and
latents, so a row decodes the tokens it would decode alone. In use::

    batch = RunningBatch(model)
    batch.add([prompt_a, prompt_b], pad_token_id)    # logits (2, V) of their first tokens
    batch.step(torch.tensor([tok_a, tok_b]))         # logits (2, V) of the next ones
    batch.keep(torch.tensor([1]))                    # row a ended
    batch.add([prompt_c], pad_token_id)              # c joins b mid-decode

R's cache lives in this process, so the worker-process backends (``shm``, ``gloo``) do not
apply here: R's concurrent step runs on a thread (the ``threads`` / ``streams`` backends).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flythinker.data.prompts import collate
from flythinker.decoding.steps import GeneratorRunner, ReasonerRunner
from flythinker.errors import UserError
from flythinker.lm import device_of, positions_from_mask


def _layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None or not all(
        hasattr(layer, "keys") and not getattr(layer, "is_sliding", False) for layer in layers
    ):
        raise UserError(f"continuous batching needs full-attention DynamicCache layers, got {type(cache).__name__}")
    return layers


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [n, 0]
    return F.pad(t, pad)


def merge_caches(old, new, extra_old: int, extra_new: int):
    """``old``'s rows then ``new``'s, each left-padded by the given number of columns."""
    if old is None:
        return new
    for a, b in zip(_layers(old), _layers(new)):
        a.keys = torch.cat([_pad_left(a.keys, extra_old, -2), _pad_left(b.keys, extra_new, -2)], dim=0)
        a.values = torch.cat([_pad_left(a.values, extra_old, -2), _pad_left(b.values, extra_new, -2)], dim=0)
    return old


def padding_columns(mask: torch.Tensor) -> int:
    """How many leading columns of a left-padded (B, T) mask are padding in every row."""
    return int((mask.sum(0) == 0).long().cumprod(0).sum())


def select_rows(cache, rows: torch.Tensor, drop_columns: int):
    """Keep ``rows`` of every layer and drop the first ``drop_columns`` (padding only) columns."""
    for layer in _layers(cache):
        layer.keys = layer.keys[rows.to(layer.keys.device), :, drop_columns:]
        layer.values = layer.values[rows.to(layer.values.device), :, drop_columns:]
    return cache


class RunningBatch:
    """The rows decoding now, with both models' caches; see the module docstring."""

    def __init__(self, model, concurrent: bool = True, threads: int | None = None):
        self.model = model
        self.g = GeneratorRunner(model)
        self.reasoning = model.lam != 0.0  # λ = 0 is SFT: R never runs
        self.static = model.variant == "static"  # R reads the prompt once
        self.r = ReasonerRunner(model) if self.reasoning else None
        self.handle = None  # R's step on a worker thread (and a side CUDA stream on one GPU)
        if concurrent and self.reasoning and not self.static:
            from flythinker.decoding.concurrent import ThreadedReasoner

            g_dev, r_dev = device_of(model.generator), device_of(model.reasoner)
            self.handle = ThreadedReasoner(side_stream=g_dev.type == "cuda" and g_dev == r_dev)
            self.handle.bind(model)
            self.handle.runner = self.r  # launch / latent run this runner's step
            if threads:  # OpenMP's thread count is per calling thread: set the worker's too
                self.handle.pool.submit(torch.set_num_threads, threads).result()
        self.mask = self.position = self.latent = None  # (B, T), (B, 1), (B, 1, d_R)

    @property
    def size(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @torch.no_grad()
    def add(self, prompts: list[list[int]], pad_token_id: int) -> torch.Tensor:  # -> (B_new, V)
        """Prefill ``prompts`` and append them as the last rows; returns their first logits."""
        if not prompts or not all(prompts):
            raise UserError("every prompt needs at least one token")
        batch = collate(prompts, pad_token_id)  # left padding
        ids, mask = batch["input_ids"], batch["attention_mask"]
        positions = positions_from_mask(mask)
        g_cache, self.g.cache = self.g.cache, None
        if self.reasoning:
            r_cache, self.r.cache = self.r.cache, None
            latents = self.r.prefill(ids, mask, positions)  # (B_new, T, d_R)
        else:
            latents = torch.zeros(*ids.shape, 1)
        logits = self.g.prefill(ids, mask, positions, latents)
        T_old, T_new = (0 if self.mask is None else self.mask.shape[1]), mask.shape[1]
        grow_old, grow_new = max(0, T_new - T_old), max(0, T_old - T_new)
        self.g.cache = merge_caches(g_cache, self.g.cache, grow_old, grow_new)
        if self.reasoning:
            self.r.cache = None if self.static else merge_caches(r_cache, self.r.cache, grow_old, grow_new)
        latent = latents[:, -1:]
        if self.mask is None:
            self.mask, self.position, self.latent = mask, positions[:, -1:], latent
        else:
            self.mask = torch.cat([_pad_left(self.mask, grow_old, 1), _pad_left(mask, grow_new, 1)])
            self.position = torch.cat([self.position, positions[:, -1:]])
            self.latent = torch.cat([self.latent, latent.to(self.latent.device)])
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, V)
        """Every row reads its new token: R(s_n) -> z_n while G(s_n + z_{n-1}) -> logits."""
        if tokens.shape != (self.size,):
            raise UserError(f"step needs one token per row ({self.size}), got {tuple(tokens.shape)}")
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.position = self.position + 1
        run_r = self.reasoning and not self.static
        if run_r and self.handle is not None:
            self.handle.launch(tokens, self.mask, self.position)  # R reads s_n -> z_n, meanwhile:
        z = self.r.step(tokens, self.mask, self.position) if run_r and self.handle is None else None
        logits = self.g.step(tokens, self.latent, self.mask, self.position)  # G reads s_n + z_{n-1}
        if run_r:
            self.latent = self.handle.latent() if self.handle is not None else z
        return logits

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current rows, in order); an empty set resets."""
        if len(rows) == 0:
            self.g.cache = self.mask = self.position = self.latent = None
            if self.r is not None:
                self.r.cache = None
            return
        mask = self.mask[rows]
        drop = padding_columns(mask)
        self.mask, self.position, self.latent = mask[:, drop:], self.position[rows], self.latent[rows]
        select_rows(self.g.cache, rows, drop)
        if self.r is not None and self.r.cache is not None:
            select_rows(self.r.cache, rows, drop)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
