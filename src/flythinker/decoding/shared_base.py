"""Shared-base decoding: when G and R are one base model (plain, or each with its own LoRA
adapter), their two rows of a step go through one forward.

    step k:   [ E(s_n) + λρ·ẑ_{n-1} ]  ─┐                      ┌─ G's rows → LM head → s_{n+1}
              [ E(s_n)              ]  ─┴─ base (+ per-row LoRA) ─┴─ R's rows → z_n

A batch of B prompts is decoded as 2B rows, G's first, each row with its own KV cache (the
prefills run as in the reference, then the two caches are stacked): :class:`SharedBaseStepper`,
the pair stepper with the 2B-row step (``steps.shared_forward``, which the captured step runs too). The weights are read once for
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

from flythinker.decoding.caches import select_rows, stack_rows
from flythinker.decoding.loop import fall_back, generate_sequential, run
from flythinker.decoding.stepper import PairStepper
from flythinker.decoding.steps import shared_forward
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
    if model.reasoning != "every_token":
        return f"R does not run at every step over G's tokens (its reasoning is {model.reasoning!r})"
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


class SharedBaseStepper(PairStepper):
    """The pair stepper over one cache of 2B rows, G's first: prompts are prefilled as the
    reference prefills them, then each step is one forward of the shared base, each row with its
    own adapter; rows join and leave as in :class:`PairStepper`."""

    def __init__(self, model):
        reason = unshared_reason(model)
        if reason is not None:
            raise UserError(f"shared-base decoding needs G and R to share one base: {reason}")
        super().__init__(model)
        self.adapters = RowAdapters(model)
        self.net, self.arg, self.cache = backbone(model.generator), cache_argument(model.generator), None

    def add(self, input_ids, attention_mask):
        b_old, t_old = self.size, 0 if self.mask is None else self.mask.shape[1]
        logits = super().add(input_ids, attention_mask)  # the runners' caches hold only the new rows
        r = self.handle.runner
        t_new, t = self.g.cache.layers[0].keys.shape[-2], self.mask.shape[1]
        self.cache = stack_rows(self.cache, self.g.cache, r.cache, b_old, t - t_old, t - t_new)
        self.g.cache = r.cache = None
        return logits

    @torch.no_grad()
    def step(self, tokens):
        self._advance(tokens)
        device = self.device
        with self.adapters.active():
            logits, self.latent, out = shared_forward(
                self.model,
                self.net,
                self.g.embed,
                self.g.rho,
                tokens.to(device)[:, None],
                self.latent.to(device),
                self.mask.to(device),
                self.position.to(device),
                {self.arg: self.cache},
            )
        self.cache = cache_of(out)
        return logits

    def keep(self, rows):
        if len(rows) == 0:
            self.cache = self.mask = self.position = self.latent = None
            return
        b = self.size
        select_rows(self.cache, torch.cat([rows, rows + b]), self._keep_rows(rows))

    def finish(self) -> None:
        self.cache = None
        super().finish()


@torch.no_grad()
def generate_shared_base(
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
) -> torch.Tensor:  # (B, T_new)
    """The decoding loop over :class:`SharedBaseStepper`; the reference (with a
    :class:`~flythinker.decoding.loop.FallbackWarning`) where G and R share no base."""
    args = (input_ids, attention_mask, max_new_tokens, sampling, eos_token_id, pad_token_id, streamer)
    reason = unshared_reason(model)
    if reason is not None:
        fall_back("shared_base", reason)
        return generate_sequential(model, *args, reasoner_prompt=reasoner_prompt)
    return run(SharedBaseStepper(model), *args)
