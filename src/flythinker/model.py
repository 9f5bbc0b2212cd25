"""FlyThinker: a Generator G and a Reasoner R joined by the fusion f() — one-pass training.

A latent z_i depends on tokens s_0..s_i only, so the teacher-forced forward is one parallel pass
of R (hidden states, no LM head) and one of G over the fused embeddings (docs/design.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.utils import ModelOutput

from flythinker.choices import DECODE_ENTRY, VARIANT_ENTRIES, resolve
from flythinker.errors import UserError
from flythinker.fusion import Fusion, RhoCache, shift_latents
from flythinker.lm import backbone, check_pair, eos_ids, positions_from_mask
from flythinker.loading import has_tokenizer, load_causal_lm, load_tokenizer
from flythinker.saving import CONFIG_NAME, FORMAT_VERSION, FolderConfig, write_model_folder

__all__ = ["FlyThinker", "FlyThinkerOutput", "check_pair", "VARIANTS", "positions_from_mask", "backbone"]

# Model classes by the "variant" their folders record; a subclass registers itself by naming one,
# and the built-in variants are found by name (choices.VARIANT_ENTRIES) when a folder names them.
VARIANTS: dict[str, type] = {}


def variant_class(name: str) -> type | None:
    """The model class of a saved ``variant`` (None: unknown)."""
    if name == "flythinker":
        return FlyThinker
    if name not in VARIANTS and name in VARIANT_ENTRIES:
        resolve(VARIANT_ENTRIES[name])  # defining the class registers it
    return VARIANTS.get(name)


@dataclass
class FlyThinkerOutput(ModelOutput):
    """Output of :meth:`FlyThinker.forward`: ``loss`` (response tokens only), ``logits`` (B, T, V),
    and the Reasoner's ``latents`` (B, T, d_R) when asked for."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    latents: torch.Tensor | None = None


class FlyThinker(nn.Module):
    """A Generator and a Reasoner trained jointly; R's latent is fused into G's next input.

    >>> model = FlyThinker(generator=g, reasoner=r, lam=0.5)           # doctest: +SKIP
    >>> out = model(input_ids=ids, attention_mask=mask, labels=labels)  # doctest: +SKIP
    >>> out.loss.backward()                                             # doctest: +SKIP
    >>> new = model.generate(ids, attention_mask=mask, max_new_tokens=64)  # (B, T_new)  # doctest: +SKIP
    """

    variant = "flythinker"
    reasoner_runs = "every_token"  # how R runs when λ ≠ 0; variants override it (see ``reasoning``)

    def __init_subclass__(cls, variant: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if variant is not None:  # class StaticThinker(FlyThinker, variant="static")
            cls.variant = variant
            VARIANTS[variant] = cls

    def __init__(
        self,
        generator: nn.Module,
        reasoner: nn.Module,
        lam: float = 0.5,
        fusion: str = "prefix",
        generator_tokenizer=None,
        reasoner_tokenizer=None,
        gate: str = "none",
    ):
        super().__init__()
        check_pair(generator, reasoner, generator_tokenizer, reasoner_tokenizer)
        self.generator, self.reasoner = generator, reasoner
        d_g = generator.get_input_embeddings().embedding_dim
        d_r = backbone(reasoner).config.hidden_size
        try:
            self.fusion = Fusion(d_reasoner=d_r, d_generator=d_g, lam=lam, mode=fusion, gate=gate)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.tokenizer = generator_tokenizer
        self._rho = RhoCache()

    @property
    def lam(self) -> float:
        return self.fusion.lam

    @property
    def reasoning(self) -> str:
        """How R runs when decoding, the one answer every decoder and the server read: ``never``
        (λ = 0: SFT), ``once`` (over the prompt: the static variant), ``every_token`` (FlyThinker)
        or ``own_prompt`` (every token, after R's own prompt: the separate-prompts variant)."""
        return "never" if self.lam == 0.0 else self.reasoner_runs

    # --- ρ --------------------------------------------------------------------------------
    def rho(self) -> torch.Tensor:
        """ρ: the mean norm of what G's input-embedding layer outputs over its whole vocabulary
        (detached fp32), computed once and kept until the table changes (:class:`RhoCache`), so
        training, every decoder, the server and the diagnostics read one value."""
        return self._rho.value(self.generator.get_input_embeddings())

    def cache_rho(self, value: float | torch.Tensor | None = None) -> torch.Tensor:
        """Fix ρ (for ZeRO-3 training: before the table is partitioned); ``None`` computes it now."""
        return self._rho.fix(self.generator.get_input_embeddings(), value)

    def clear_rho_cache(self) -> None:
        self._rho.clear()

    # --- the training forward ---------------------------------------------------------------
    def reason(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """R's latents z (B, T, d_R): final-layer hidden states, no LM head."""
        return backbone(self.reasoner)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state

    def fused_latents(self, latents, attention_mask, labels=None, prompt_lengths=None):
        """Which latent goes where: R's latents (B, T, d_R) -> (the latent fused at each position
        (B, T, d_R), where one is fused (B, T)). Here z_{i-1} at position i.

        Variants change only this (:class:`flythinker.static.StaticThinker`: one prompt latent at
        every response position); the fusion f() itself is always ``self.fusion``.
        """
        return shift_latents(latents, attention_mask)

    def read(
        self,
        input_ids,
        attention_mask,
        position_ids,
        labels=None,
        prompt_lengths=None,
        reasoner_input_ids=None,
        reasoner_attention_mask=None,
    ):
        """R's pass of a teacher-forced batch: (R's latents (B, T_R, d_R), the latent fused at each
        of G's positions (B, T, d_R), where one is fused (B, T)). Here R reads G's own tokens;
        :class:`flythinker.separate.SeparatePromptThinker` reads R's own sequence."""
        if reasoner_input_ids is not None:
            raise UserError(
                "reasoner_input_ids: this model's R reads G's tokens; an R with its own prompt "
                "(PromptConfig.profile_in='reasoner') is the separate_prompts variant"
            )
        latents = self.reason(input_ids, attention_mask, position_ids)  # (B, T, d_R)
        return (latents, *self.fused_latents(latents, attention_mask, labels, prompt_lengths))

    def place_latents(self, embeds, latents, attention_mask, labels=None, prompt_lengths=None) -> torch.Tensor:
        """G's inputs (B, T, d_G) with R's latents (B, T, d_R) fused in where :meth:`fused_latents` says."""
        z, where = self.fused_latents(latents, attention_mask, labels, prompt_lengths)
        return self.fusion(embeds, z.to(embeds.device), self.rho(), where.to(embeds.device))

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        labels: torch.Tensor | None = None,  # (B, T), -100 on prompt and padding
        position_ids: torch.Tensor | None = None,
        return_latents: bool = False,
        prompt_lengths: torch.Tensor | None = None,  # (B,) real prompt tokens; only variants read it
        reasoner_input_ids: torch.Tensor | None = None,  # (B, T_R) R's own sequence: variants only
        reasoner_attention_mask: torch.Tensor | None = None,  # (B, T_R)
        **loss_kwargs,
    ) -> FlyThinkerOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        embeds = self.generator.get_input_embeddings()(input_ids)  # (B, T, d_G)
        latents = None
        if self.fusion.lam != 0.0 or return_latents:  # λ = 0 is SFT: R is not run at all
            r_inputs = (reasoner_input_ids, reasoner_attention_mask)
            latents, z, where = self.read(input_ids, attention_mask, position_ids, labels, prompt_lengths, *r_inputs)
            embeds = self.fusion(embeds, z.to(embeds.device), self.rho(), where.to(embeds.device))
        out = self.generator(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=False,
            **loss_kwargs,
        )
        return FlyThinkerOutput(loss=out.loss, logits=out.logits, latents=latents if return_latents else None)

    # --- decoding -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        streamer=None,
        mode: str = "sequential",
        backend: str | None = None,
        reasoner_input_ids: torch.Tensor | None = None,
        reasoner_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode up to ``max_new_tokens`` per row; returns the new tokens (B, T_new).

        ``mode="sequential"`` is the reference decoder (R then G each step). Rows that finished
        are padded with ``pad_token_id`` after their EOS. ``streamer`` follows transformers'
        streamer protocol (``put``/``end``), e.g. ``TextStreamer`` or ``TextIteratorStreamer``.
        ``reasoner_input_ids`` / ``reasoner_attention_mask``: R's own left-padded prompts, for the
        ``separate_prompts`` variant only.

        >>> new = model.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=True,
        ...                      temperature=0.8, top_p=0.95, seed=0)  # doctest: +SKIP
        """
        return resolve(DECODE_ENTRY)(
            self,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            streamer=streamer,
            mode=mode,
            backend=backend,
            reasoner_input_ids=reasoner_input_ids,
            reasoner_attention_mask=reasoner_attention_mask,
        )

    def _special_ids(self, eos, pad) -> tuple[list[int], int]:
        gen_cfg = getattr(self.generator, "generation_config", None)
        if eos is None:  # the tokenizer's EOS and every id the generation config ends on
            eos = eos_ids(self.generator, self.tokenizer)
        if pad is None and self.tokenizer is not None:
            pad = self.tokenizer.pad_token_id
        if pad is None and gen_cfg is not None:
            pad = gen_cfg.pad_token_id
        eos_list = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        if pad is None:
            pad = eos_list[0] if eos_list else 0
        return eos_list, int(pad)

    # --- save / load --------------------------------------------------------------------------
    def fusion_config(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "lam": self.fusion.lam,
            "fusion": self.fusion.mode,
            "d_generator": self.fusion.d_generator,
            "d_reasoner": self.fusion.d_reasoner,
            **({"variant": self.variant} if self.variant != "flythinker" else {}),
            **({"gate": self.fusion.gate_mode} if self.fusion.gate is not None else {}),
            **({"center_latent": True} if self.fusion.latent_mean is not None else {}),
            **({"standardize_latent": True} if self.fusion.latent_scale is not None else {}),
        }

    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False, tokenizer=None) -> Path:
        """Write ``generator/``, ``reasoner/`` (standard transformers folders, safetensors),
        ``flythinker.json`` and, for ``fusion="linear"``, ``fusion.safetensors``.

        The folder is written beside its destination and renamed into place, so a crash never
        leaves a half-written model; an existing folder is kept unless ``overwrite=True``.

        >>> model.save_pretrained("runs/my-model")  # doctest: +SKIP
        """
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        fusion_state = self.fusion.state_dict() or None  # the linear map, the gate
        return write_model_folder(
            path,
            {"generator": (self.generator, None), "reasoner": (self.reasoner, None)},
            config=self.fusion_config(),
            fusion_state=fusion_state,
            tokenizer=tokenizer,
            overwrite=overwrite,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        weights: str = "folders",
        **model_kwargs,
    ) -> "FlyThinker":
        """Load a folder written by :meth:`save_pretrained` (local files only, safetensors only).

        ``weights="folders"`` reads ``generator/`` and ``reasoner/``; ``"adapters"`` reads a LoRA
        run's unmerged ``adapters/``: G and R as two peft models over one base in memory.
        ``model_kwargs`` go to both ``AutoModelForCausalLM.from_pretrained`` calls (e.g.
        ``attn_implementation="sdpa"``). The folder's ``variant`` picks the class.

        >>> model = FlyThinker.from_pretrained("runs/my-model")  # doctest: +SKIP
        """
        path = Path(path).expanduser()
        cfg = FolderConfig.read(path)
        cls = variant_class(cfg.variant)
        if cls is None:
            raise UserError(f"{path / CONFIG_NAME}: unknown FlyThinker variant {cfg.variant!r}")
        if weights not in ("folders", "adapters"):
            raise UserError(f"weights must be 'folders' or 'adapters', got {weights!r}")
        if weights == "adapters":
            from flythinker.adapters import load_adapter_pair

            if cfg.variant != "flythinker":
                raise UserError(
                    f"{path}: unmerged adapters are loaded for FlyThinker folders, not the {cfg.variant!r} variant"
                )
            g, r, tok = load_adapter_pair(path, dtype=dtype, trust_remote_code=trust_remote_code)
            models, toks = {"generator": g, "reasoner": r}, {"generator": tok, "reasoner": tok}
        else:
            models, toks = _load_folders(path, dtype, trust_remote_code, model_kwargs)
        model = cls(
            models["generator"],
            models["reasoner"],
            lam=cfg.lam,
            fusion=cfg.fusion,
            gate=cfg.gate,
            generator_tokenizer=toks["generator"],
            reasoner_tokenizer=toks["reasoner"],
        )
        cfg.restore(model.fusion, path)
        return (model.to(device) if device is not None else model).eval()


def _load_folders(path: Path, dtype, trust_remote_code: bool, model_kwargs: dict) -> tuple[dict, dict]:
    models, toks = {}, {}
    for name in ("generator", "reasoner"):
        sub = path / name
        if not sub.is_dir():
            raise UserError(f"{path}: missing {name}/ folder")
        models[name] = load_causal_lm(sub, name, dtype=dtype, trust_remote_code=trust_remote_code, **model_kwargs)
        toks[name] = load_tokenizer(sub, trust_remote_code) if has_tokenizer(sub) else None
    return models, toks
