"""FlyThinker as a vLLM model: G's and R's decoder stacks in one model, the latent as a state.

At every step of vLLM's scheduler the model sees a flat batch of tokens: one token of each
decoding request, then a chunk of each prefilling request. For those tokens it runs

1. R's decoder stack (vLLM's own implementation of R's family, with its own paged KV cache):
   z_t, R's final hidden state at every token;
2. :class:`LatentShift`: z_{t-1} for every token. Inside a chunk that is the previous token's
   z; the chunk's first token (and a decode token) reads it from the request's state slot, and
   the last z of each request is written back there. A request's first token has no previous
   latent: its embedding is left untouched, exactly as in training (``shift_latents``);
3. :class:`flythinker.fusion.Fusion` — the same module the trained model uses — adds
   λ·ρ·z_{t-1}/‖z_{t-1}‖ to G's input embedding, with ρ and the fusion's weights as exported;
4. G's decoder stack and its logits.

The state is one vector of R's width per request. It lives in vLLM's state cache for hybrid
(Mamba-like) models, as a short-convolution state of length one, so vLLM allocates a slot per
running request, says whether a prefill chunk continues one, rebuilds it on preemption by
recomputing, and copies it at block boundaries for prefix caching in ``align`` mode.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.compilation.breakable_cudagraph import eager_break_during_capture
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.model_executor.layers.mamba.mamba_utils import (
    MambaStateCopyFuncCalculator,
    MambaStateDtypeCalculator,
    MambaStateShapeCalculator,
    is_conv_state_dim_first,
)
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid, SupportsMambaPrefixCaching
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix
from vllm.utils.torch_utils import direct_register_custom_op
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from flythinker.fusion import Fusion

STATE_LAYER = "latent.0"  # a cache layer's name must hold exactly one integer


def _state_shape(d_reasoner: int) -> tuple[tuple[int, int]]:
    # one previous latent per request: a short convolution's state of kernel 2 (length 1), never
    # split across tensor-parallel ranks (R's hidden states are whole on every rank)
    return MambaStateShapeCalculator.short_conv_state_shape(
        tp_world_size=1, intermediate_size=d_reasoner, conv_kernel=2
    )


class LatentShift(MambaBase, nn.Module):
    """z (N, d_R) for a step's tokens → (z_{t-1} (N, d_R), whether one exists (N,))."""

    def __init__(self, d_reasoner: int, vllm_config: VllmConfig, prefix: str = STATE_LAYER):
        nn.Module.__init__(self)
        self.d_reasoner, self.prefix = d_reasoner, prefix
        self.model_config, self.cache_config = vllm_config.model_config, vllm_config.cache_config
        context = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in context:
            raise ValueError(f"duplicate layer name: {prefix}")
        context[prefix] = self
        self.kv_cache = (torch.tensor([]),)

    def get_state_shape(self):
        return _state_shape(self.d_reasoner)

    def get_state_dtype(self):
        return MambaStateDtypeCalculator.short_conv_state_dtype(
            self.model_config.dtype, self.cache_config.mamba_cache_dtype
        )

    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum.SHORT_CONV

    @property
    def is_kv_cache_tp_replicated(self) -> bool:
        return True

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prev = torch.zeros_like(z)
        has_prev = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        torch.ops.vllm.flythinker_latent_shift(z, prev, has_prev, self.prefix)
        return prev, has_prev

    def shift(self, z: torch.Tensor, prev: torch.Tensor, has_prev: torch.Tensor) -> None:
        metadata = get_forward_context().attn_metadata
        metadata = metadata.get(self.prefix) if isinstance(metadata, dict) else None
        if metadata is None:  # the profiling run: no request, no state
            return
        state = self.kv_cache[0]
        state = state[..., 0] if is_conv_state_dim_first() else state[:, 0]  # (slots, d_R)
        n_dec, n_pre_tok = metadata.num_decode_tokens, metadata.num_prefill_tokens
        if n_dec > 0:  # one token per decoding request, which always has a previous one
            slots = metadata.state_indices_tensor_d[:, 0][:n_dec].long()
            prev[:n_dec] = state[slots].to(prev.dtype)
            has_prev[:n_dec] = 1
            state[slots] = z[:n_dec].to(state.dtype)
        if metadata.num_prefills > 0:
            zp = z[n_dec : n_dec + n_pre_tok]
            starts = metadata.query_start_loc_p[:-1].long()
            ends = metadata.query_start_loc_p[1:].long()
            slots = metadata.state_indices_tensor_p.long()
            prev[n_dec + 1 : n_dec + n_pre_tok] = zp[:-1]  # inside a chunk: the previous token
            has_prev[n_dec + 1 : n_dec + n_pre_tok] = 1
            continues = metadata.has_initial_states_p
            first = n_dec + starts
            prev[first] = torch.where(continues[:, None], state[slots].to(prev.dtype), 0)
            has_prev[first] = continues.to(has_prev.dtype)
            state[slots] = zp[ends - 1].to(state.dtype)


@eager_break_during_capture
def flythinker_latent_shift(z: torch.Tensor, prev: torch.Tensor, has_prev: torch.Tensor, layer_name: str) -> None:
    get_forward_context().no_compile_layers[layer_name].shift(z, prev, has_prev)


direct_register_custom_op(
    op_name="flythinker_latent_shift", op_func=flythinker_latent_shift, mutates_args=["prev", "has_prev"]
)


class FlyThinkerForCausalLM(nn.Module, HasInnerState, IsHybrid, SupportsMambaPrefixCaching):
    """A folder written by ``flythinker export vllm``, served by vLLM with exact tokens."""

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig):
        return _state_shape(vllm_config.model_config.hf_config.reasoner_config.hidden_size)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig):
        return MambaStateDtypeCalculator.short_conv_state_dtype(
            vllm_config.model_config.dtype, vllm_config.cache_config.mamba_cache_dtype
        )

    @classmethod
    def get_mamba_state_copy_func(cls):
        return MambaStateCopyFuncCalculator.short_conv_state_copy_func()

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        g_cfg, r_cfg = config.text_config, config.reasoner_config
        self.generator = init_vllm_registered_model(
            vllm_config, hf_config=g_cfg, prefix=maybe_prefix(prefix, "generator")
        )
        self.reasoner = init_vllm_registered_model(
            vllm_config, hf_config=r_cfg, prefix=maybe_prefix(prefix, "reasoner")
        )
        self.latent = LatentShift(r_cfg.hidden_size, vllm_config, prefix=maybe_prefix(prefix, STATE_LAYER))
        self.fusion = Fusion(r_cfg.hidden_size, g_cfg.hidden_size, lam=config.lam, mode=config.fusion, gate=config.gate)
        if config.center_latent or config.standardize_latent:
            self.fusion.enable_centering(standardize=config.standardize_latent)
        self.fusion.eval()  # μ and σ are read from the folder, never measured here
        self.register_buffer("rho", torch.tensor(config.rho, dtype=torch.float32), persistent=False)
        self.make_empty_intermediate_tensors = getattr(self.generator, "make_empty_intermediate_tensors", None)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.generator.embed_input_ids(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        embeds = self.generator.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        if self.fusion.lam != 0.0:  # λ = 0 is SFT: R is not run at all
            z = self.reasoner.model(input_ids, positions, None)  # (N, d_R): R's final hidden states
            prev, has_prev = self.latent(z)
            embeds = self.fusion(embeds[None], prev[None], self.rho, has_prev[None])[0]
        return self.generator.model(None, positions, intermediate_tensors, inputs_embeds=embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.generator.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        parts: dict[str, list] = {"generator": [], "reasoner": [], "fusion": []}
        for name, tensor in weights:
            head, _, rest = name.partition(".")
            if head not in parts:
                raise ValueError(f"unexpected weight {name!r} (an exported folder holds generator.*, reasoner.*)")
            parts[head].append((rest, tensor))
        loaded = {f"generator.{n}" for n in self.generator.load_weights(parts["generator"])}
        loaded |= {f"reasoner.{n}" for n in self.reasoner.load_weights(parts["reasoner"])}
        if parts["fusion"]:
            self.fusion.load_state_dict(dict(parts["fusion"]))
        loaded |= {f"fusion.{n}" for n, _ in self.fusion.named_parameters()}
        return loaded
