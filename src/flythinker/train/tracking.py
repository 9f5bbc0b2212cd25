"""``train.report_to``: the run's log records also go to experiment trackers through accelerate's
own tracker integrations (TensorBoard, W&B, MLflow, ...), offline by default, under RUN/tracking/.

Every record the trainer writes to ``log.jsonl`` (a training step, a dev evaluation) is logged with
its numbers under ``<kind>/<name>`` (``train/loss``, ``eval/dev_loss``) at its optimizer step.

    >>> accelerator_kwargs(cfg, out)          # Accelerator(**...): log_with, project_dir  # doctest: +SKIP
    >>> run_log.tracker = start_tracking(acc, cfg, out)                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

SKIP = {"step", "epoch", "time", "kind"}


def accelerator_kwargs(cfg, out: Path | None) -> dict:
    """``log_with`` and ``project_dir`` for accelerate's ``Accelerator``; none without trackers."""
    if not cfg.train.report_to or out is None:
        return {}
    if "tensorboard" in cfg.train.report_to:
        from flythinker.extras import require

        require("track", "tensorboard", what="train.report_to: tensorboard")
    # offline unless the user says otherwise: W&B writes to its run folder, MLflow to a file store
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", str(Path(out) / "tracking"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", (Path(out).resolve() / "tracking" / "mlruns").as_uri())
    return {"log_with": list(cfg.train.report_to), "project_dir": str(Path(out) / "tracking")}


def start_tracking(acc, cfg, out: Path):
    """Start the trackers (main process) with the run's config; returns the function that logs one
    record, or None without trackers."""
    if not cfg.train.report_to:
        return None
    acc.init_trackers(Path(out).name, config=_flat(_as_dict(cfg)))

    def log(record: dict) -> None:
        kind = record.get("kind", "log")
        values = {
            f"{kind}/{k}": v
            for k, v in record.items()
            if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if values:
            acc.log(values, step=record.get("step"))

    return log


def _as_dict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"train.lr": 1e-4, ...}``: scalars only, as trackers' hyper-parameter tables want."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = "none" if v is None else v
        else:
            out[key] = str(v)
    return out
