"""What a training run returns (also written to ``RUN/result.json``), and how it can fail."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from flythinker.errors import UserError


@dataclass
class TrainResult:
    """What :func:`train` returns (also written to ``RUN/result.json``)."""

    out_dir: Path
    final_checkpoint: Path | None
    """The trained model (FlyThinker folder, or a transformers folder for SFT)."""
    best_checkpoint: Path | None
    """The model with the lowest dev loss (None without a dev split)."""
    last_checkpoint: Path | None
    """The newest resumable training state."""
    steps: int
    losses: list[float] = field(default_factory=list)
    """Training loss of every logged optimizer step, from step 1 (resumed runs included)."""
    dev_losses: list[float] = field(default_factory=list)
    """Dev loss after each epoch."""
    best_dev_loss: float | None = None
    train_time_s: float = 0.0
    """Seconds spent in training steps (evaluation and saving excluded)."""
    tokens_per_s: float = 0.0
    """Non-padding tokens per second over all devices."""
    trainable_parameters: int = 0
    replica_fingerprints: list[float] | None = None
    """Per-process weight checksums at the end (equal when DDP replicas are in sync)."""

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


class TrainingDiverged(UserError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is kept."""
