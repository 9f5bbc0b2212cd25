"""The two halves of a decoding step, shared by the reference and the concurrent decoders.

Each runner owns one model and its KV cache (transformers' ``DynamicCache``). A decoder only
decides *when* they run: one after the other (loop.py's reference) or at the same time.

    step k:   G( E_G(s_n) + λρ·ẑ_{n-1} ) -> logits for s_{n+1}     (latent from step k-1)
              R( s_n )                   -> z_n                      (ready for step k+1)
"""

from __future__ import annotations

import torch

from flythinker.lm import backbone, cache_argument, cache_of, device_of, positions_from_mask


class ReasonerRunner:
    """R's decoder stack with its cache: prompt → latents (B, T, d_R), then one token a step."""

    def __init__(self, model):
        self.net = backbone(model.reasoner)
        self.cache_arg = cache_argument(model.reasoner)
        self.device = device_of(model.reasoner)
        self.cache = None

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:  # (B, T, d_R)
        out = self.net(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            use_cache=True,
        )
        self.cache = cache_of(out)
        return out.last_hidden_state

    def step(self, tokens, attention_mask, position_ids) -> torch.Tensor:  # (B,), (B, T), (B, 1) -> (B, 1, d_R)
        out = self.net(
            input_ids=tokens.to(self.device).unsqueeze(1),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            **{self.cache_arg: self.cache},
            use_cache=True,
        )
        self.cache = cache_of(out)
        return out.last_hidden_state


class GeneratorRunner:
    """G with its cache; every input embedding goes through the model's one fusion module, and
    the prompt's latents are placed by the model itself (``place_latents``, as in training)."""

    def __init__(self, model):
        self.model = model
        self.net = model.generator
        self.cache_arg = cache_argument(model.generator)
        self.embed = model.generator.get_input_embeddings()
        self.device = self.embed.weight.device
        self.rho = model.rho().to(self.device)  # fixed during decoding: weights do not change
        self.cache = None

    def prefill(self, input_ids, attention_mask, position_ids, latents) -> torch.Tensor:  # -> (B, V)
        """``latents`` (B, T, d_R) are R's prefill outputs, placed as the training forward places them."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        embeds = self.model.place_latents(self.embed(input_ids), latents.to(self.device), attention_mask)
        out = self.net(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids.to(self.device),
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = cache_of(out)
        return out.logits[:, -1]

    def step(self, tokens, latent, attention_mask, position_ids) -> torch.Tensor:
        """tokens (B,), latent (B, 1, d_R) from the previous step -> logits (B, V)."""
        tokens = tokens.to(self.device).unsqueeze(1)  # (B, 1)
        embeds = self.model.fusion(self.embed(tokens), latent.to(self.device), self.rho, torch.ones_like(tokens))
        out = self.net(
            inputs_embeds=embeds,
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            **{self.cache_arg: self.cache},
            use_cache=True,
        )
        self.cache = cache_of(out)
        return out.logits[:, -1]


class RowState:
    """Per-row bookkeeping of a batched decode: attention mask, positions, EOS, output tokens.

    Finished rows keep receiving ``pad_token_id`` (as transformers' ``generate`` does), so a
    batch stays rectangular; the returned tokens are (B, T_new).
    """

    def __init__(self, input_ids, attention_mask, eos_token_id: list[int], pad_token_id: int, streamer=None):
        self.sequences = input_ids  # (B, T) grows by one column a step
        self.attention_mask = attention_mask.long()  # (B, T)
        self.position_ids = positions_from_mask(self.attention_mask)  # (B, T)
        self.eos = torch.tensor(eos_token_id, dtype=torch.long, device=input_ids.device)
        self.pad = pad_token_id
        self.finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self.new_tokens: list[torch.Tensor] = []
        self.streamer = streamer
        if streamer is not None:
            streamer.put(input_ids.cpu())

    def push(self, tokens: torch.Tensor) -> torch.Tensor:
        """Record sampled tokens (B,); rows already finished get pad. Returns the kept tokens."""
        tokens = torch.where(self.finished, torch.full_like(tokens, self.pad), tokens)
        self.new_tokens.append(tokens)
        self.sequences = torch.cat([self.sequences, tokens[:, None]], dim=1)
        self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(tokens[:, None])], dim=1)
        next_pos = self.position_ids[:, -1:] + 1
        self.position_ids = torch.cat([self.position_ids, next_pos], dim=1)
        if len(self.eos):
            self.finished |= torch.isin(tokens, self.eos)
        if self.streamer is not None:
            self.streamer.put(tokens.cpu())
        return tokens

    @property
    def all_finished(self) -> bool:
        return bool(self.finished.all())

    def last_position(self) -> torch.Tensor:  # (B, 1)
        return self.position_ids[:, -1:]

    def result(self) -> torch.Tensor:  # (B, T_new)
        if self.streamer is not None:
            self.streamer.end()
        if not self.new_tokens:
            return self.sequences[:, :0]
        return torch.stack(self.new_tokens, dim=1)
