"""The halves of a decoding step: R's runner and G's runner, and both in one forward of a shared base.

Each runner owns one model and its KV cache (transformers' ``DynamicCache``). A stepper
(stepper.py) only decides *when* they run: one after the other (the reference) or at the same
time; :func:`shared_forward` is G's and R's rows of one step through one base (shared_base.py and
the captured step both call it).

    step k:   G( E_G(s_n) + λρ·ẑ_{n-1} ) -> logits for s_{n+1}     (latent from step k-1)
              R( s_n )                   -> z_n                      (ready for step k+1)
"""

from __future__ import annotations

import torch

from flythinker.lm import backbone, cache_argument, cache_of, device_of


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


def shared_forward(model, base, embed, rho, tokens, latent, attention_mask, position_ids, cache_kwargs):
    """G's and R's rows of one step through their shared ``base`` (2B rows, G's first).

    tokens (B, 1), ẑ_{n-1} (B, 1, d), the rows' mask and positions -> G's logits (B, V), z_n
    (B, 1, d) and the forward's output (its cache)."""
    embeds = embed(tokens)
    fused = model.fusion(embeds, latent, rho, torch.ones_like(tokens))
    out = base(
        inputs_embeds=torch.cat([fused, embeds]),
        attention_mask=torch.cat([attention_mask, attention_mask]),
        position_ids=torch.cat([position_ids, position_ids]),
        **cache_kwargs,
        use_cache=True,
    )
    b, hidden = tokens.shape[0], out.last_hidden_state  # (2B, 1, d)
    return head_logits(model.generator, hidden[:b, -1]), hidden[b:], out
