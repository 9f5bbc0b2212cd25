"""The run's JSONL log (one line per logged optimizer step or evaluation) and its PNG plot.

{"kind": "train", "step": 12, "epoch": 0, "loss": 5.31, "lr": 0.001, "grad_norm": 1.7,
 "tokens": 2048, "step_time_s": 0.21, "tokens_per_s": 9752.4, "time": 1718000000.0}
{"kind": "eval", "step": 15, "epoch": 0, "dev_loss": 5.02, "dev_tokens": 4310}
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class RunLog:
    """Append-only JSONL log; on resume, lines after the checkpoint's step are dropped so the
    log of an interrupted run reads like the log of an uninterrupted one.

    >>> log = RunLog("runs/tiny/log.jsonl"); log.write({"kind": "train", "step": 1, "loss": 5.0})  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tracker = None  # train.report_to: each record also goes to the trackers (train/tracking.py)

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker(record)

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
        return out

    def truncate(self, step: int) -> None:
        """Keep only the records of steps ≤ ``step`` (written atomically)."""
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, self.path)


def plot_curves(records: list[dict], png: str | os.PathLike, title: str = "") -> Path:
    """Train loss (and dev loss) by step, learning rate below; written with matplotlib's Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval" and "dev_loss" in r]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=(3, 1))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["dev_loss"] for r in evals], "o-", label="dev loss")
    ax_loss.set_ylabel("cross-entropy (response tokens)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_loss.set_title(title)
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], lw=1, color="tab:gray")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    tmp = png.with_name(".tmp-" + png.name)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, png)
    return png
