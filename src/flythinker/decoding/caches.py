"""Cache surgery, in one place: the KV caches every stepper keeps, merged when rows join,
cut when rows leave, stacked when G's and R's rows share one forward, and the static caches of
the captured step.

transformers' ``DynamicCache`` layers hold ``keys`` / ``values`` of shape (B, heads, T, d); a
batch is left-padded, so rows that join are padded on the left to the common length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, StaticLayer

from flythinker.errors import UserError


def layers(cache) -> list:
    """The cache's layers, refused unless each is a full-attention layer with keys and values."""
    found = getattr(cache, "layers", None)
    if found is None or not all(hasattr(x, "keys") and not getattr(x, "is_sliding", False) for x in found):
        raise UserError(f"continuous batching needs full-attention DynamicCache layers, got {type(cache).__name__}")
    return found


def pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``t`` with ``n`` zeros before its entries along ``dim``."""
    if n == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [n, 0]
    return F.pad(t, pad)


def merge_caches(old, new, extra_old: int, extra_new: int):
    """``old``'s rows then ``new``'s, each left-padded by the given number of columns."""
    if old is None:
        return new
    for a, b in zip(layers(old), layers(new)):
        a.keys = torch.cat([pad_left(a.keys, extra_old, -2), pad_left(b.keys, extra_new, -2)], dim=0)
        a.values = torch.cat([pad_left(a.values, extra_old, -2), pad_left(b.values, extra_new, -2)], dim=0)
    return old


def padding_columns(mask: torch.Tensor) -> int:
    """How many leading columns of a left-padded (B, T) mask are padding in every row."""
    return int((mask.sum(0) == 0).long().cumprod(0).sum())


def select_rows(cache, rows: torch.Tensor, drop_columns: int):
    """Keep ``rows`` of every layer and drop the first ``drop_columns`` (padding only) columns."""
    for layer in layers(cache):
        layer.keys = layer.keys[rows.to(layer.keys.device), :, drop_columns:]
        layer.values = layer.values[rows.to(layer.values.device), :, drop_columns:]
    return cache


def stack_rows(old, new_g, new_r, b_old: int, grow_old: int, grow_new: int):
    """One cache of rows [old G, new G, old R, new R] (``old`` holds 2·``b_old`` rows, G's first),
    each side left-padded to the common length: G's and R's rows of a shared base."""
    from transformers import DynamicCache

    out = DynamicCache()
    for i, (g, r) in enumerate(zip(layers(new_g), layers(new_r))):
        parts = {"keys": [], "values": []}
        for kind in parts:
            a, b = getattr(g, kind), getattr(r, kind)
            if old is not None:
                o = getattr(layers(old)[i], kind)
                halves = (pad_left(o[:b_old], grow_old, -2), pad_left(a, grow_new, -2))
                parts[kind] = [*halves, pad_left(o[b_old:], grow_old, -2), pad_left(b, grow_new, -2)]
            else:
                parts[kind] = [a, b]
        out.update(torch.cat(parts["keys"]), torch.cat(parts["values"]), i)
    return out


class _IndexedLayer(StaticLayer):
    """transformers' static layer, written at its cache's shared device index instead of a counter
    (and, for a shared base, only in the rows the cache's ``rows`` names)."""

    def __init__(self, owner: "StaticKV", length: int):
        super().__init__(max_cache_len=length)
        self.owner = owner

    def lazy_initialization(self, key_states, value_states) -> None:
        rows = self.owner.batch or key_states.shape[0]
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros((rows, key_states.shape[1], self.max_cache_len, key_states.shape[3]))
        self.values = value_states.new_zeros((rows, value_states.shape[1], self.max_cache_len, value_states.shape[3]))
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rows = self.owner.rows
        keys, values = (self.keys, self.values) if rows is None else (self.keys[rows], self.values[rows])
        keys.index_copy_(2, self.owner.index, key_states)
        values.index_copy_(2, self.owner.index, value_states)
        return keys, values

    def get_seq_length(self) -> int:
        return self.max_cache_len


class StaticKV(Cache):
    """A KV cache of ``length`` columns per layer; every layer writes at ``index`` (a device
    tensor of column numbers the decoder sets: ``arange(T)`` for the prompt, then one column).
    With ``batch`` it holds that many rows and a forward writes and reads the ``rows`` slice."""

    def __init__(self, length: int, batch: int | None = None):
        self.index, self.batch, self.rows = None, batch, None
        super().__init__(layer_class_to_replicate=lambda: _IndexedLayer(self, length))
