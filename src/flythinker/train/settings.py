"""The ``train:`` section of a training config: the recipe and the run's bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field

from flythinker.train.fromdict import ConfigError, _choice, _number

PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("cosine", "linear", "constant")
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")  # accelerate's names
LOSS_NORMALIZATIONS = ("sequence", "tokens")


@dataclass
class TrainSettings:
    """The recipe (AdamW, warmup + decay, accumulation, clipping, precision) and the run's
    bookkeeping (checkpoints, evaluation, logging)."""

    epochs: int = 1
    """Passes over the training data."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (schedule length too); None: epochs decide."""
    batch_size: int = 1
    """Examples per device per forward (micro-batch)."""
    grad_accum: int | None = None
    """Micro-batches per optimizer step; None: from effective_batch_size, else 1."""
    effective_batch_size: int | None = None
    """Examples per optimizer step over all devices (= batch_size × devices × grad_accum)."""
    lr: float = 5e-6
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (not applied to biases and norms)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_ratio: float = 0.0
    """Fraction of the steps spent in linear warmup (ignored when warmup_steps is set)."""
    warmup_steps: int | None = None
    """Linear warmup steps."""
    schedule: str = "cosine"
    """Decay after warmup: cosine, linear or constant."""
    min_lr_ratio: float = 0.0
    """The decay ends at lr × min_lr_ratio."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm; None: no clipping."""
    precision: str = "fp32"
    """fp32, or bf16 (autocast; weights stay in their dtype)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (both models): less memory, ~30% slower."""
    seed: int = 0
    """Seeds weights of tiny models, data order, dropout."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0: only at each epoch's end)."""
    keep_last: int = 2
    """Resumable checkpoints kept (older ones are deleted); 0: none are written (the run cannot be
    resumed, and a full fine-tuning's optimizer state, ~2x the weights, never reaches the disk)."""
    eval: bool = True
    """Dev loss after each epoch; the best model is kept in run/best."""
    eval_every: int = 0
    """Also log the dev loss at step 0 and every N optimizer steps (the start-up curve; 0: at
    epoch ends only). These evaluations do not pick the best model."""
    eval_generate: int = 0
    """Also decode this many dev examples each epoch and score them (BLEU, ROUGE, METEOR)."""
    eval_max_new_tokens: int = 128
    """Token budget of those generations."""
    log_every: int = 1
    """Write a log line every N optimizer steps."""
    report_to: list[str] = field(default_factory=list)
    """Also log to these trackers through accelerate (tensorboard, wandb, mlflow, comet_ml, aim,
    clearml, dvclive), offline by default, under RUN/tracking/; log.jsonl is always written."""
    loss_normalization: str = "sequence"
    """Under gradient accumulation: "sequence" (each micro-batch's token mean, averaged over
    micro-batches: the published numbers) or "tokens" (every response token of the optimizer
    step weighs the same, as transformers' num_items_in_batch)."""
    resume: bool = False
    """Continue from the run folder's last complete checkpoint."""
    overwrite: bool = False
    """Delete a previous run in the run folder."""

    def __post_init__(self):
        _number(self, "epochs", low=1, integer=True)
        _number(self, "max_steps", low=1, integer=True, optional=True)
        _number(self, "batch_size", low=1, integer=True)
        _number(self, "grad_accum", low=1, integer=True, optional=True)
        _number(self, "effective_batch_size", low=1, integer=True, optional=True)
        _number(self, "lr", strict=True)
        _number(self, "weight_decay")
        _number(self, "eps", strict=True)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ConfigError("betas", f"must be two numbers in [0, 1), got {self.betas!r}")
        _number(self, "warmup_ratio")
        if self.warmup_ratio >= 1:
            raise ConfigError("warmup_ratio", f"must be < 1, got {self.warmup_ratio}")
        _number(self, "warmup_steps", integer=True, optional=True)
        _choice(self, "schedule", SCHEDULES)
        _number(self, "min_lr_ratio")
        if self.min_lr_ratio > 1:
            raise ConfigError("min_lr_ratio", f"must be <= 1, got {self.min_lr_ratio}")
        _number(self, "max_grad_norm", strict=True, optional=True)
        _choice(self, "precision", PRECISIONS)
        for name in ("seed", "save_every", "eval_every", "eval_generate", "keep_last"):
            _number(self, name, integer=True)
        if self.save_every and not self.keep_last:
            raise ConfigError(
                "save_every", f"{self.save_every} needs keep_last >= 1 (keep_last=0 writes no checkpoints)"
            )
        for name in ("eval_max_new_tokens", "log_every"):
            _number(self, name, low=1, integer=True)
        for name in self.report_to:
            if name not in TRACKERS:
                raise ConfigError("report_to", f"unknown tracker {name!r}; one of {', '.join(TRACKERS)}")
        _choice(self, "loss_normalization", LOSS_NORMALIZATIONS)
        if self.resume and self.overwrite:
            raise ConfigError("resume", "resume and overwrite exclude each other")

    def accumulation(self, num_processes: int) -> int:
        """Micro-batches per optimizer step on ``num_processes`` devices."""
        if self.effective_batch_size is None:
            return self.grad_accum or 1
        per_pass = self.batch_size * num_processes
        ga, rest = divmod(self.effective_batch_size, per_pass)
        if rest or ga < 1 or (self.grad_accum is not None and self.grad_accum != ga):
            raise ConfigError(
                "train.effective_batch_size",
                f"{self.effective_batch_size} is not batch_size ({self.batch_size}) × devices "
                f"({num_processes}) × grad_accum ({self.grad_accum or 'any integer'})",
            )
        return ga
