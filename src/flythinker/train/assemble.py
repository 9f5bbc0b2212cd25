"""Everything a run is made of, assembled from a :class:`TrainConfig`: tokenizer, models, data.

Models come from local folders only (``local_files_only``, safetensors), or are ``tiny``
random Qwen2s built from numbers so that the whole recipe runs on a laptop.

    >>> tok = build_tokenizer(cfg.model, train_examples)               # doctest: +SKIP
    >>> model = build_model(cfg.model, tok, seed=0)                    # FlyThinker or SFTModel  # doctest: +SKIP
    >>> prepare_for_training(model, cfg.model, gradient_checkpointing=False)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from flythinker import loading
from flythinker.errors import UserError
from flythinker.lm import pad_id, positions_from_mask
from flythinker.model import FlyThinker
from flythinker.separate import SeparatePromptThinker
from flythinker.train.config import DataConfig, ModelConfig, ModelSpec


class SFTModel(nn.Module):
    """The SFT baseline: the Generator alone, with FlyThinker's forward signature and padding rule.

    Keeping G under the attribute ``generator`` gives SFT and FlyThinker checkpoints the same
    parameter names, so one export path serves both.

    >>> loss = SFTModel(g)(input_ids=ids, attention_mask=mask, labels=labels).loss  # doctest: +SKIP
    """

    def __init__(self, generator: nn.Module, tokenizer=None):
        super().__init__()
        self.generator, self.tokenizer = generator, tokenizer

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.generator(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            position_ids=positions_from_mask(attention_mask),
            use_cache=False,
            **kwargs,
        )


# --- tokenizer ----------------------------------------------------------------------------------


def corpus_texts(examples) -> list[str]:
    """Every text a prompt can hold (query, target, rendered profile items): the BPE corpus."""
    from flythinker.data.longlamp import render_profile_item

    texts = []
    for ex in examples:
        texts += [ex.input, ex.output] + [render_profile_item(item, ex.task) for item in ex.profile]
    return texts


def build_tokenizer(cfg: ModelConfig, train_examples):
    """The run's tokenizer: a folder (``model.tokenizer`` or the generator's), or a BPE trained on
    the training examples (``model.tokenizer: train``, the default for tiny models)."""
    if cfg.tokenizer == "train":
        from flythinker.data.tokenizer import train_tokenizer

        return train_tokenizer(corpus_texts(train_examples), vocab_size=cfg.tokenizer_vocab_size)
    folder = cfg.tokenizer or cfg.generator.path
    try:
        tok = loading.load_tokenizer(folder, trust_remote_code=cfg.generator.trust_remote_code)
    except (OSError, ValueError) as e:  # UserError included: name the config key
        raise UserError(f"model.tokenizer: cannot load a tokenizer from {folder} ({str(e).splitlines()[0]})") from None
    pad_id(tok)
    return tok


# --- models --------------------------------------------------------------------------------------


def tiny_causal_lm(spec: ModelSpec, tokenizer, seed: int) -> nn.Module:
    """A random Qwen2ForCausalLM sized by ``spec.tiny``, its vocabulary the tokenizer's."""
    from flythinker.tiny import qwen2_config, random_lm

    t = spec.tiny
    cfg = qwen2_config(
        t.hidden_size,
        t.num_layers,
        t.num_heads,
        t.num_kv_heads,
        t.intermediate_size,
        len(tokenizer),
        t.tie_embeddings,
        max_positions=t.max_positions,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
        bos=tokenizer.bos_token_id,
        attn=spec.attn_implementation,
    )
    dtype = loading.as_dtype(spec.dtype)
    return random_lm(cfg, seed, dtype=None if dtype == "auto" else dtype, keep_rng=True)  # the run's RNG untouched


def load_causal_lm(spec: ModelSpec, key: str) -> nn.Module:
    """The local folder of a ``ModelSpec``, through the one loader (``flythinker.loading``)."""
    return loading.load_causal_lm(
        spec.path,
        f"{key}.path",
        dtype=spec.dtype,
        trust_remote_code=spec.trust_remote_code,
        attn_implementation=spec.attn_implementation,
        num_layers=spec.num_layers,
    )


def _causal_lm(spec: ModelSpec, tokenizer, seed: int, key: str) -> nn.Module:
    return tiny_causal_lm(spec, tokenizer, seed) if spec.tiny is not None else load_causal_lm(spec, key)


def build_model(cfg: ModelConfig, tokenizer, seed: int = 0, prompt_cfg=None) -> nn.Module:
    """A :class:`FlyThinker` (mode flythinker) or an :class:`SFTModel` (mode sft) from the config; a
    :class:`~flythinker.separate.SeparatePromptThinker` when ``prompt_cfg`` puts the profile in R's
    prompt alone (``data.prompt.profile_in: reasoner``).

    >>> model = build_model(cfg.model, tokenizer, seed=0)  # doctest: +SKIP
    """
    generator = _causal_lm(cfg.generator, tokenizer, seed, "model.generator")
    if cfg.mode == "sft":
        return SFTModel(generator, tokenizer)
    reasoner = _causal_lm(cfg.reasoner, tokenizer, seed + 1, "model.reasoner")
    r_tok = tokenizer  # a reasoner folder with its own tokenizer must share the generator's vocabulary
    if cfg.reasoner.path is not None and (Path(cfg.reasoner.path) / "tokenizer.json").is_file():
        r_tok = loading.load_tokenizer(cfg.reasoner.path, trust_remote_code=cfg.reasoner.trust_remote_code)
    cls = SeparatePromptThinker if getattr(prompt_cfg, "profile_in", "both") == "reasoner" else FlyThinker
    try:
        return cls(
            generator,
            reasoner,
            lam=cfg.lam,
            fusion=cfg.fusion,
            generator_tokenizer=tokenizer,
            reasoner_tokenizer=r_tok,
            gate=cfg.gate,
        )
    except UserError as e:
        raise UserError(f"model.generator.path / model.reasoner.path: {e}") from None


def as_trainable(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """The module a run trains, from a model passed in by the caller: an SFT run of a
    :class:`FlyThinker` trains its generator alone; anything else is used as it is."""
    if cfg.mode == "sft" and not isinstance(model, SFTModel):
        generator = model.generator if isinstance(model, FlyThinker) else model
        return SFTModel(generator, getattr(model, "tokenizer", None))
    if cfg.mode == "flythinker" and not isinstance(model, FlyThinker):
        raise UserError("model.mode=flythinker needs a FlyThinker model (or set model.mode=sft)")
    return model


def _add_lora(model: nn.Module, spec, key: str) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules="all-linear" if list(spec.target_modules) == ["all-linear"] else list(spec.target_modules),
        task_type="CAUSAL_LM",
        use_dora=spec.use_dora,
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # e.g. a target module name the model does not have
        raise UserError(f"{key}.lora: {e}") from None


def prepare_for_training(model: nn.Module, cfg: ModelConfig, gradient_checkpointing: bool) -> nn.Module:
    """Apply LoRA, freezing, the norm-matching's backward rule and gradient checkpointing in place;
    returns ``model``.

    R's LM head is never run in training (only its hidden states are), so it is frozen: it
    would get no gradient, which DDP reports as an error and AdamW would waste memory on.
    """
    specs = [("generator", cfg.generator)]
    if isinstance(model, FlyThinker):
        specs.append(("reasoner", cfg.reasoner))
    for name, spec in specs:
        if spec is not None and spec.lora is not None and not hasattr(getattr(model, name), "peft_config"):
            setattr(model, name, _add_lora(getattr(model, name), spec.lora, f"model.{name}"))
    if isinstance(model, FlyThinker):
        model.fusion.detach_norm = cfg.detach_latent_norm  # backward only (model.detach_latent_norm)
        if cfg.center_latent or cfg.standardize_latent:
            model.fusion.enable_centering(standardize=cfg.standardize_latent)
        r = model.reasoner
        if cfg.freeze_reasoner:
            r.requires_grad_(False)
        head = r.get_output_embeddings()
        if head is not None and head.weight is not r.get_input_embeddings().weight:
            head.requires_grad_(False)
    if gradient_checkpointing:
        for name, _ in specs:
            sub = getattr(model, name)
            if not (cfg.freeze_reasoner and name == "reasoner"):
                _checkpoint_activations(sub)
    return model


def _checkpoint_activations(lm: nn.Module) -> None:
    kwargs = {"use_reentrant": False}  # reentrant checkpointing needs inputs that require grad
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    size = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731  (a ZeRO-3 shard's full size)
    return sum(size(p) for p in params if p.requires_grad), sum(size(p) for p in params)


# --- data -----------------------------------------------------------------------------------------


def load_split(cfg: DataConfig, split: str, limit: int | None):
    from flythinker.data.longlamp import load_examples

    return load_examples(cfg.path, split=split, task=cfg.task, limit=limit)


class EncodedExamples(torch.utils.data.Dataset):
    """Examples turned into ``{"input_ids", "labels"}`` on first use (prompt building is slow:
    retrieval and sentence-level truncation), then kept."""

    def __init__(self, examples, tokenizer, prompt_cfg):
        self.examples, self.tokenizer, self.prompt_cfg = list(examples), tokenizer, prompt_cfg
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        if i not in self._cache:
            from flythinker.data.prompts import encode_for_training

            self._cache[i] = encode_for_training(self.examples[i], self.tokenizer, self.prompt_cfg)
        return self._cache[i]


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch, padded to whole optimizer steps, resumable mid-epoch.

    Padding (repeating the epoch's first examples) makes every epoch a whole number of
    optimizer steps on every device, so one device with gradient accumulation and several
    devices without it see the same batches, and a resumed run skips exactly what was done.
    Deliberately no ``set_epoch`` method: accelerate would call it with its own counter.

    >>> s = EpochSampler(5, multiple=4, seed=0); len(s), sorted(set(s))
    (8, [0, 1, 2, 3, 4])
    """

    def __init__(self, n: int, multiple: int, seed: int, shuffle: bool = True):
        self.n, self.multiple, self.seed, self.shuffle = n, multiple, seed, shuffle
        self.epoch, self.skip = 0, 0

    def epoch_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = math.ceil(self.n / self.multiple) * self.multiple
        return (order * math.ceil(total / self.n))[:total]

    def __len__(self) -> int:
        return math.ceil(self.n / self.multiple) * self.multiple - self.skip

    def __iter__(self):
        return iter(self.epoch_order(self.epoch)[self.skip :])
