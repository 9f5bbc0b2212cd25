"""Training configuration: dataclasses, YAML loading, dotted overrides, validation.

A config has three sections. ``model`` declares the Generator and the Reasoner side by side
(torchtune's student/teacher layout), ``data`` where the examples come from and how prompts
are built, ``train`` the optimisation recipe and the run's bookkeeping::

    model:
      mode: flythinker            # or sft: the Generator alone, the paper's main baseline
      lam: 0.5
      generator: {path: /models/Qwen2.5-7B-Instruct, dtype: float32}
      reasoner:  {path: /models/Qwen2.5-1.5B-Instruct, dtype: float32, lora: {r: 16}}
    data: {path: ../shared/data/gitcommits/sample/user_based}
    train: {lr: 5.0e-6, epochs: 5, effective_batch_size: 64, precision: bf16}

Relative paths are read from the current directory (commands run from the repository
root). Every bad key or value is a :class:`UserError` that names it (``train.lr``).

    >>> cfg = load_config("src/flythinker/configs/tiny_flythinker.yaml", ["train.lr=1e-3"])  # doctest: +SKIP
    >>> cfg.train.lr                                                                         # doctest: +SKIP
    0.001
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from flythinker.errors import UserError
from flythinker.train.fromdict import ConfigError, _choice, _number, apply_overrides, from_dict, suggest
from flythinker.train.settings import TrainSettings

__all__ = ["TrainConfig", "ModelConfig", "ModelSpec", "TinyModel", "LoraSpec", "DataConfig", "TrainSettings",
           "load_config", "check_paths", "apply_overrides", "from_dict", "ConfigError"]

MODES = ("flythinker", "sft")
DTYPES = ("float32", "bfloat16", "float16", "auto")
FUSIONS = ("prefix", "linear")
GATES = ("none", "scalar", "vector")


@dataclass
class TinyModel:
    """A randomly initialised Qwen2 built from numbers: runs anywhere, nothing downloaded."""

    hidden_size: int = 64
    """Width d of the model."""
    num_layers: int = 2
    """Number of decoder layers."""
    num_heads: int = 4
    """Attention heads (must divide hidden_size)."""
    num_kv_heads: int = 2
    """Key/value heads (must divide num_heads)."""
    intermediate_size: int | None = None
    """MLP width; None: 4 × hidden_size."""
    max_positions: int = 4096
    """Longest sequence (RoPE table size)."""
    tie_embeddings: bool = False
    """Share the input embedding and the LM head."""

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "max_positions"):
            _number(self, name, low=1, integer=True)
        _number(self, "intermediate_size", low=1, integer=True, optional=True)
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError("num_heads", "num_heads must divide hidden_size and num_kv_heads must divide "
                              f"num_heads (got {self.hidden_size}/{self.num_heads}/{self.num_kv_heads})")


@dataclass
class LoraSpec:
    """LoRA adapters (peft) for one model; only the adapters are trained."""

    r: int = 16
    """Rank of the update."""
    alpha: float = 32.0
    """Scale numerator: the update is (alpha / r) · B A."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Names of the layers that get adapters; ``[all-linear]`` (peft's rule): every linear layer of
    the decoder but the LM head, whatever the family calls its attention and MLP projections (for
    Qwen and Llama: q/k/v/o_proj and gate/up/down_proj)."""
    use_dora: bool = False
    """DoRA (weight-decomposed LoRA): a learned magnitude per output beside the low-rank update."""

    def __post_init__(self):
        _number(self, "r", low=1, integer=True)
        _number(self, "alpha", strict=True)
        _number(self, "dropout")
        if self.dropout >= 1:
            raise ConfigError("dropout", f"must be < 1, got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("target_modules", "must name at least one module")


@dataclass
class ModelSpec:
    """One causal LM: a local folder (``path``) or a ``tiny`` random model; dtype; LoRA."""

    path: str | None = None
    """Local model folder (AutoModelForCausalLM, safetensors, no download)."""
    tiny: TinyModel | None = None
    """Build a random Qwen2 instead of loading one."""
    dtype: str = "float32"
    """Weights dtype: float32 (with train.precision=bf16: fp32 master weights), bfloat16, float16, auto."""
    lora: LoraSpec | None = None
    """Train LoRA adapters instead of all weights."""
    trust_remote_code: bool = False
    """Allow custom modeling code shipped in the folder (only if you trust it)."""
    attn_implementation: str | None = None
    """e.g. sdpa, flash_attention_2, eager; None: transformers' default."""
    num_layers: int | None = None
    """Keep only the first k decoder layers of the folder's model (e.g. a cheaper Reasoner cut from
    the Generator's base); the saved model then has k layers. None: all of them."""

    def __post_init__(self):
        if (self.path is None) == (self.tiny is None):
            raise ConfigError("path", "give exactly one of 'path' (a local model folder) or 'tiny'")
        if self.num_layers is not None:
            if self.tiny is not None:
                raise ConfigError("num_layers", "cuts a loaded 'path' model; a tiny model sets tiny.num_layers")
            if not isinstance(self.num_layers, int) or self.num_layers < 1:
                raise ConfigError("num_layers", f"must be a whole number ≥ 1, got {self.num_layers!r}")
        _choice(self, "dtype", DTYPES)


@dataclass
class ModelConfig:
    """What is trained: the Generator, the Reasoner, the fusion, the tokenizer."""

    generator: ModelSpec | None = None
    """The Generator G (writes the response); may be left out when train() is given a model."""
    reasoner: ModelSpec | None = None
    """The Reasoner R (one latent per token); needed for mode=flythinker."""
    mode: str = "flythinker"
    """flythinker: G + R jointly; sft: G alone (the baseline; R is not loaded)."""
    lam: float = 0.5
    """λ, the weight of the latent (0 is exactly SFT of G)."""
    fusion: str = "prefix"
    """prefix: add the latent into G's first d_R dims (paper); linear: learned d_R→d_G map."""
    freeze_reasoner: bool = False
    """Keep R's weights fixed (an ablation of the paper)."""
    tokenizer: str | None = None
    """Tokenizer folder; 'train': BPE trained on the training data; None: the generator's folder
    (or 'train' for tiny models)."""
    tokenizer_vocab_size: int = 2000
    """Vocabulary size of a trained tokenizer."""
    lam_warmup_steps: int = 0
    """Opt-in start-up remedy, not in the paper: λ rises linearly from lam/N to lam over the first
    N optimizer steps (0: the paper's constant λ). Saved models always carry ``lam``."""
    reasoner_first_steps: int = 0
    """Opt-in start-up remedy, not in the paper: for the first N optimizer steps only R learns
    (G's gradients are dropped), so an untrained latent cannot pull a pretrained G off course."""
    gate: str = "none"
    """Opt-in start-up remedy, not in the paper: a learned gate on the latent, initialised at 0, so
    training starts exactly at SFT: none, scalar, or vector (one per dimension of G, LayerScale)."""
    gate_lr: float = 1.0e-2
    """Learning rate of the gate (its own, no weight decay; follows the run's schedule)."""
    center_latent: bool = False
    """Opt-in, not in the paper: subtract R's mean latent μ (measured on the first training batch,
    then fixed and saved) before the norm-matching: λ·ρ·(z−μ)/‖z−μ‖."""
    standardize_latent: bool = False
    """Opt-in, not in the paper: centre R's latent and divide each dimension by its standard
    deviation σ (both measured on the first training batch, then fixed and saved) before the
    norm-matching: λ·ρ·u/‖u‖, u = (z−μ)/σ."""
    detach_latent_norm: bool = False
    """Treat ‖z‖ in the norm-matching λ·ρ·z/‖z‖ as a constant in backward, as the authors'
    released training script does (false: the norm is differentiated). Training only: the
    forward, and so every decoder, is unchanged."""

    def __post_init__(self):
        _choice(self, "mode", MODES)
        _choice(self, "fusion", FUSIONS)
        _number(self, "lam")
        _number(self, "tokenizer_vocab_size", low=258, integer=True)
        _number(self, "lam_warmup_steps", integer=True)
        _number(self, "reasoner_first_steps", integer=True)
        _choice(self, "gate", GATES)
        _number(self, "gate_lr", strict=True)
        for name in ("detach_latent_norm", "center_latent", "standardize_latent"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.center_latent and self.mode != "flythinker":
            raise ConfigError("center_latent", "centres the Reasoner's latent: needs mode=flythinker")
        if self.standardize_latent and self.mode != "flythinker":
            raise ConfigError("standardize_latent", "standardises the Reasoner's latent: needs mode=flythinker")
        if self.gate != "none" and self.mode != "flythinker":
            raise ConfigError("gate", "gates the Reasoner's latent: needs mode=flythinker")
        if self.reasoner_first_steps and self.freeze_reasoner:
            raise ConfigError("reasoner_first_steps", "needs a trainable reasoner (freeze_reasoner is true)")
        if self.freeze_reasoner and self.reasoner is not None and self.reasoner.lora is not None:
            raise ConfigError("freeze_reasoner", "a frozen reasoner cannot also train LoRA adapters")
        if self.tokenizer is None and (self.generator is None or self.generator.path is None):
            self.tokenizer = "train"


@dataclass
class DataConfig:
    """Where the LongLaMP-format examples are and how prompts are built."""

    path: str | None = None
    """A LongLaMP folder or file (see flythinker.data.longlamp.load_examples)."""
    train_split: str = "train"
    """Split trained on."""
    dev_split: str | None = "dev"
    """Split evaluated each epoch (dev loss); None: no evaluation."""
    task: str | None = None
    """LongLaMP task name; None: detected from the data."""
    limit_train: int | None = None
    """Use only the first N training examples."""
    limit_dev: int | None = None
    """Use only the first N dev examples."""
    prompt: dict = field(default_factory=dict)
    """Fields of flythinker.data.prompts.PromptConfig (budgets, retrieval, k, ...)."""
    num_workers: int = 0
    """DataLoader worker processes (prompts are built lazily, in the workers)."""

    def __post_init__(self):
        _number(self, "limit_train", low=1, integer=True, optional=True)
        _number(self, "limit_dev", low=1, integer=True, optional=True)
        _number(self, "num_workers", integer=True)
        self.prompt_config()  # validate now, not at the first batch

    def prompt_config(self):
        from flythinker.data.prompts import PromptConfig

        names = {f.name for f in dataclasses.fields(PromptConfig)}
        for key in self.prompt:
            if key not in names:
                raise ConfigError(f"prompt.{key}", f"unknown key{suggest(key, names)}")
        try:
            return PromptConfig(**self.prompt)
        except UserError as e:
            raise ConfigError("prompt", str(e).replace("PromptConfig.", "")) from None


@dataclass
class TrainConfig:
    """A whole training run: ``model``, ``data``, ``train`` (see the module doc)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self):
        if self.data.prompt_config().profile_in == "reasoner" and self.model.mode != "flythinker":
            raise ConfigError(
                "data.prompt.profile_in",
                "'reasoner' puts the profile in R's prompt alone: needs model.mode=flythinker "
                "(SFT on the query alone is data.prompt.retrieval=none)",
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path, overrides: list[str] | tuple = ()) -> TrainConfig:
    """Read a YAML config, apply ``KEY=VALUE`` overrides and validate it.

    >>> cfg = load_config("src/flythinker/configs/tiny_sft.yaml", ["train.epochs=1"])  # doctest: +SKIP
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:  # one line: where, and what the parser wanted
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where} ({what})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with model/data/train sections")
    raw = apply_overrides(raw, list(overrides))
    try:
        return from_dict(TrainConfig, raw)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def check_paths(cfg: TrainConfig, *, model: bool = True, data: bool = True) -> None:
    """Fail early, naming the key, when a local folder or file the run needs is missing."""
    needed = []
    if model:
        specs = [("model.generator", cfg.model.generator)]
        if cfg.model.mode == "flythinker":
            specs.append(("model.reasoner", cfg.model.reasoner))
        for key, spec in specs:
            if spec is None:
                raise UserError(f"{key}: required for model.mode={cfg.model.mode} (a local 'path' or 'tiny')")
            if spec.path is not None:
                needed.append((key + ".path", spec.path))
        if cfg.model.tokenizer not in (None, "train"):
            needed.append(("model.tokenizer", cfg.model.tokenizer))
    if data:
        if cfg.data.path is None:
            raise UserError("data.path: required (a LongLaMP folder or file) unless examples are passed in")
        needed.append(("data.path", cfg.data.path))
    from flythinker.safe_load import missing_path_error

    for key, p in needed:
        if not Path(p).expanduser().exists():
            if key == "data.path":
                raise UserError(f"{key}: {p} does not exist (relative paths are read from {Path.cwd()})")
            raise missing_path_error(p, key + ":")
