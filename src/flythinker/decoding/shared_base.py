"""Shared-base decoding: when G and R are one base model (plain, or each with its own LoRA
adapter), their two rows of a step go through one forward.

    step k:   [ E(s_n) + λρ·ẑ_{n-1} ]  ─┐                      ┌─ G's rows → LM head → s_{n+1}
              [ E(s_n)              ]  ─┴─ base (+ per-row LoRA) ─┴─ R's rows → z_n

A batch of B prompts is decoded as 2B rows, G's first, each row with its own KV cache (the
prefills run as in the reference, then the two caches are stacked). The weights are read once for
both rows: at batch 1 on this project's CPU a step costs 1.06–1.17 × an SFT step (docs/decoding.md).

Per-row adapters are a batched LoRA of this module's own: every adapted linear layer of the base
gets both adapters' A and B stacked (ranks padded with zeros, scaling folded into B) and adds
``x_g·A_gᵀ·B_gᵀ`` to G's rows and ``x_r·A_rᵀ·B_rᵀ`` to R's rows with two batched matmuls, while
peft's own layers run with their adapters disabled (tested against peft's forward).

What shares no base (different weights or shapes; adapters this batched LoRA does not express:
DoRA, LoRA biases, LoRA on the embedding table or on non-linear layers) is decoded by the reference
loop; :func:`unshared_reason` says why.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from flythinker.decoding.batching import RunningBatch, _layers, _pad_left, padding_columns, select_rows
from flythinker.decoding.loop import generate_sequential
from flythinker.decoding.sampling import TokenSampler
from flythinker.decoding.steps import GeneratorRunner, ReasonerRunner, RowState
from flythinker.errors import UserError
from flythinker.lm import backbone, cache_argument, cache_of, sliding_window

_BASE = ".base_layer"


def _unwrap(lm):
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def _base_params(lm) -> dict[str, torch.Tensor]:
    """The base model's weights by name, peft's adapters left out and its wrapper names undone."""
    return {
        name.replace(_BASE, ""): p
        for name, p in _unwrap(lm).named_parameters()
        if "lora_" not in name and "modules_to_save" not in name
    }


def _adapters(lm) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (A (r, in), B·scaling (out, r)) of the active LoRA adapter of each layer."""
    out = {}
    for name, module in _unwrap(lm).named_modules():
        if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
            continue
        for adapter in getattr(module, "active_adapters", []):
            if adapter in getattr(module, "lora_embedding_A", {}):
                raise ValueError(f"{name}: LoRA on the embedding table is not decoded with a shared base")
            if adapter not in module.lora_A:
                continue
            if getattr(module.lora_B[adapter], "bias", None) is not None:
                raise ValueError(f"{name}: LoRA biases are not decoded with a shared base")
            if getattr(module, "use_dora", {}).get(adapter, False):
                raise ValueError(f"{name}: DoRA adapters are not decoded with a shared base")
            if not isinstance(module.base_layer, nn.Linear):
                raise ValueError(
                    f"{name}: LoRA on a {type(module.base_layer).__name__} is not decoded with a shared base"
                )
            a = module.lora_A[adapter].weight
            b = module.lora_B[adapter].weight * module.scaling[adapter]
            if name in out:
                raise ValueError(f"{name}: more than one active adapter")
            out[name] = (a, b)
    return out


def unshared_reason(model) -> str | None:
    """Why G and R of ``model`` cannot be decoded as one base (None: they can)."""
    g, r = model.generator, model.reasoner
    if model.lam == 0.0 or model.variant == "static":
        return "R does not run at every step (λ = 0 or the static variant)"
    if model.fusion.proj is not None or model.fusion.d_reasoner != model.fusion.d_generator:
        return "the fusion maps R's width to G's (a shared base has one width)"
    for name, lm in (("generator", g), ("reasoner", r)):
        if sliding_window(lm.config):
            return f"the {name} has a sliding window (its cache layers are not stacked here)"
    if type(_unwrap(g)) is not type(_unwrap(r)):
        return "G and R are different architectures"
    pg, pr = _base_params(g), _base_params(r)
    if pg.keys() != pr.keys():
        return "G and R have different layers"
    for name, p in pg.items():
        q = pr[name]
        if p.shape != q.shape or p.dtype != q.dtype or p.device != q.device:
            return f"{name} differs in shape, dtype or device"
        if p.data_ptr() != q.data_ptr() and not torch.equal(p, q):
            return f"G and R differ in {name} beyond their LoRA adapters"
    try:
        _adapters(g), _adapters(r)
    except ValueError as e:
        return str(e)
    return None


class _RowLoRA:
    """Both models' adapters of one linear layer, stacked: rows [:B] get G's, rows [B:] R's."""

    def __init__(self, g: tuple | None, r: tuple | None, like: nn.Linear):
        rank = max(x[0].shape[0] for x in (g, r) if x is not None)
        dtype, device = like.weight.dtype, like.weight.device

        def padded(pair, i, shape):
            out = torch.zeros(shape, dtype=dtype, device=device)
            if pair is not None:
                w = pair[i].to(dtype)
                out[: w.shape[0], : w.shape[1]] = w
            return out

        self.a = torch.stack([padded(x, 0, (rank, like.in_features)) for x in (g, r)])  # (2, r, in)
        self.b = torch.stack([padded(x, 1, (like.out_features, rank)) for x in (g, r)])  # (2, out, r)
        self.b = self.b.transpose(1, 2).contiguous()  # (2, r, out)
        self.a = self.a.transpose(1, 2).contiguous()  # (2, in, r)

    def __call__(self, module, inputs, output):
        x = inputs[0]  # (2B, T, in)
        two_b, t = x.shape[0], x.shape[1]
        xs = x.reshape(2, (two_b // 2) * t, x.shape[-1])
        delta = torch.bmm(torch.bmm(xs.to(self.a.dtype), self.a), self.b)  # (2, B·T, out)
        return output + delta.reshape(two_b, t, -1).to(output.dtype)


class RowAdapters:
    """Both models' LoRA adapters stacked per layer of G's base (built once); inside ``active()``, a
    forward of G's base over [G rows; R rows] gives each row its own model's adapter."""

    def __init__(self, model):
        g, r = model.generator, model.reasoner
        ga, ra = _adapters(g), _adapters(r)
        self.peft_model = g if hasattr(g, "disable_adapter") and ga else None
        modules = dict(_unwrap(g).named_modules())
        self.layers = []
        for name in sorted(set(ga) | set(ra)):
            layer = modules[name]
            layer = getattr(layer, "base_layer", layer)
            self.layers.append((layer, _RowLoRA(ga.get(name), ra.get(name), layer)))

    @contextmanager
    def active(self):
        if not self.layers:
            yield
            return
        with ExitStack() as stack:
            if self.peft_model is not None:
                stack.enter_context(self.peft_model.disable_adapter())
            handles = [layer.register_forward_hook(hook) for layer, hook in self.layers]
            try:
                yield
            finally:
                for h in handles:
                    h.remove()


def stack_caches(first, second):
    """One cache of 2B rows from two caches of B rows (transformers' cache layers, stacked)."""
    from transformers import DynamicCache

    out = DynamicCache()
    for i, (a, b) in enumerate(zip(first.layers, second.layers)):
        out.update(torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values]), i)
    return out


def head_logits(lm, hidden: torch.Tensor) -> torch.Tensor:
    """G's logits from its last hidden states, with the family's own scaling and soft-capping."""
    cfg = lm.config
    logits = lm.get_output_embeddings()(hidden)
    if getattr(cfg, "logit_scale", None):  # Cohere
        logits = logits * cfg.logit_scale
    if getattr(cfg, "logits_scaling", None):  # Granite
        logits = logits / cfg.logits_scaling
    if getattr(cfg, "final_logit_softcapping", None):  # Gemma 2 / 3
        cap = cfg.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def generate_shared_base(
    model, input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer=None
) -> torch.Tensor:  # (B, T_new)
    """The reference loop (same rows, sampler, EOS and padding) with G's and R's steps in one forward."""
    reason = unshared_reason(model)
    if reason is not None:
        model._shared_base_fallback = reason  # what `bench decode` and the tests read
        return generate_sequential(
            model, input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer
        )
    rows = RowState(input_ids, attention_mask, eos_token_id, pad_token_id, streamer)
    g_run, r_run = GeneratorRunner(model), ReasonerRunner(model)
    sampler = TokenSampler(sampling, device=g_run.device)
    net, arg, device = backbone(model.generator), cache_argument(model.generator), g_run.device
    latents = r_run.prefill(input_ids, rows.attention_mask, rows.position_ids)  # (B, T, d)
    logits = g_run.prefill(input_ids, rows.attention_mask, rows.position_ids, latents)
    cache, latent = stack_caches(g_run.cache, r_run.cache), latents[:, -1:]
    g_run.cache = r_run.cache = None
    B = input_ids.shape[0]
    with RowAdapters(model).active():
        for step in range(max_new_tokens):
            tokens = rows.push(sampler(logits, rows.sequences.to(logits.device)).to(input_ids.device))
            if rows.all_finished or step == max_new_tokens - 1:
                break
            ids = tokens.to(device)[:, None]
            embeds = g_run.embed(ids)
            fused = model.fusion(embeds, latent.to(device), g_run.rho, torch.ones_like(ids))
            mask = rows.attention_mask.to(device)
            position = rows.last_position().to(device)
            out = net(
                inputs_embeds=torch.cat([fused, embeds]),
                attention_mask=torch.cat([mask, mask]),
                position_ids=torch.cat([position, position]),
                **{arg: cache},
                use_cache=True,
            )
            cache, hidden = cache_of(out), out.last_hidden_state  # (2B, 1, d)
            logits, latent = head_logits(model.generator, hidden[:B, -1]), hidden[B:]
    return rows.result()


def _stacked(old, new_g, new_r, b_old: int, grow_old: int, grow_new: int):
    """One cache of rows [old G, new G, old R, new R], each side left-padded to the common length."""
    from transformers import DynamicCache

    out = DynamicCache()
    for i, (g, r) in enumerate(zip(_layers(new_g), _layers(new_r))):
        parts = {"keys": [], "values": []}
        for kind in parts:
            a, b = getattr(g, kind), getattr(r, kind)
            if old is not None:
                o = getattr(_layers(old)[i], kind)
                halves = (_pad_left(o[:b_old], grow_old, -2), _pad_left(a, grow_new, -2))
                parts[kind] = [*halves, _pad_left(o[b_old:], grow_old, -2), _pad_left(b, grow_new, -2)]
            else:
                parts[kind] = [a, b]
        out.update(torch.cat(parts["keys"]), torch.cat(parts["values"]), i)
    return out


class SharedBaseBatch(RunningBatch):
    """The server's running batch (batching.py) over one cache of 2B rows, G's first: prompts are
    prefilled as the reference prefills them, then each step is one forward of the shared base,
    each row with its own adapter; rows join and leave as in :class:`RunningBatch`."""

    def __init__(self, model):
        reason = unshared_reason(model)
        if reason is not None:
            raise UserError(f"shared-base decoding needs G and R to share one base: {reason}")
        super().__init__(model, concurrent=False)
        self.adapters = RowAdapters(model)
        self.net, self.arg, self.cache = backbone(model.generator), cache_argument(model.generator), None

    def add(self, prompts, pad_token_id):
        b_old, t_old = self.size, 0 if self.mask is None else self.mask.shape[1]
        logits = super().add(prompts, pad_token_id)  # its own caches hold only the new rows
        t_new = self.g.cache.layers[0].keys.shape[-2]
        t = self.mask.shape[1]
        self.cache = _stacked(self.cache, self.g.cache, self.r.cache, b_old, t - t_old, t - t_new)
        self.g.cache = self.r.cache = None
        return logits

    @torch.no_grad()
    def step(self, tokens):
        if tokens.shape != (self.size,):
            raise UserError(f"step needs one token per row ({self.size}), got {tuple(tokens.shape)}")
        b, device = self.size, self.g.device
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.position = self.position + 1
        ids = tokens.to(device)[:, None]
        embeds = self.g.embed(ids)
        fused = self.model.fusion(embeds, self.latent.to(device), self.g.rho, torch.ones_like(ids))
        mask, position = self.mask.to(device), self.position.to(device)
        with self.adapters.active():
            out = self.net(
                inputs_embeds=torch.cat([fused, embeds]),
                attention_mask=torch.cat([mask, mask]),
                position_ids=torch.cat([position, position]),
                **{self.arg: self.cache},
                use_cache=True,
            )
        self.cache, hidden = cache_of(out), out.last_hidden_state
        self.latent = hidden[b:]
        return head_logits(self.model.generator, hidden[:b, -1])

    def keep(self, rows):
        if len(rows) == 0:
            self.cache = self.mask = self.position = self.latent = None
            return
        b, mask = self.size, self.mask[rows]
        drop = padding_columns(mask)
        self.mask, self.position, self.latent = mask[:, drop:], self.position[rows], self.latent[rows]
        select_rows(self.cache, torch.cat([rows, rows + b]), drop)
