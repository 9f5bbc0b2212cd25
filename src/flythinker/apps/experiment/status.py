"""``flythinker experiment CONFIG --status``: where a long matrix stands, read from its cell folders
alone (no model is loaded, nothing runs): every cell in run order, finished, part-way (training step,
predictions written) or to do, with the measured times of finished cells and an estimate of
what is left at their pace."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from flythinker.apps.experiment.config import CellGroup, ExperimentConfig, cell_dir


@dataclass
class CellState:
    """One cell's progress, from its folder."""

    cell: str
    """``SPLIT/ROW/seedS``."""
    kind: str
    """The pace it is estimated at: ``G alone`` (sft, nonpers, rag; their zero-shot rows count
    only the part after training), ``G + R`` (flythinker, static: the same two passes a step)."""
    state: str
    """``done``, ``training``, ``decoding``, ``scoring`` or ``to do``."""
    train_frac: float = 0.0
    """Share of the training steps done (1 once trained or for a zero-shot cell)."""
    decode_frac: float = 0.0
    """Share of the test examples already in predictions.jsonl."""
    detail: str = ""
    train_s: float | None = None
    cell_s: float | None = None
    """Measured (finished cells' metrics.json): training seconds and the cell's wall seconds."""
    left_s: float | None = None
    """Estimated seconds still to run (None: no finished cell of its kind to go by)."""


def _last_step(checkpoints: Path) -> int:
    steps = [int(m.group(1)) for p in checkpoints.glob("step-*") if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return max(steps, default=0)


def _logged_step(log: Path) -> int:
    """The last optimizer step in the trainer's ``log.jsonl`` (0 if none)."""
    step = 0
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if row.get("kind") == "train":
                step = int(row.get("step", step))
    return step


def _lines(path: Path) -> int:
    return sum(1 for line in path.open(encoding="utf-8") if line.strip()) if path.is_file() else 0


def cell_state(exp: ExperimentConfig, group: CellGroup, split: str, seed: int, n_test: int) -> CellState:
    """The progress of one cell, read from ``cell_dir``."""
    from flythinker.apps.experiment.cells import cell_train_config
    from flythinker.apps.experiment.methods import get_baseline

    out = cell_dir(exp, group, split, seed)
    kind = "G alone" if get_baseline(group.method).model == "sft" else "G + R"
    s = CellState(f"{split}/{group.name}/seed{seed}", kind, "to do")
    if (out / "metrics.json").is_file():
        m = json.loads((out / "metrics.json").read_text())
        s.state, s.train_frac, s.decode_frac, s.train_s, s.cell_s = "done", 1.0, 1.0, m.get("train_s"), m.get("cell_s")
        return s
    done = _lines(out / "predictions.jsonl")
    if group.zero_shot or (out / "train" / "final").is_dir():
        s.train_frac, s.decode_frac = 1.0, done / max(n_test, 1)
        s.state = "scoring" if done >= n_test else "decoding" if done or (out / "train" / "final").is_dir() else "to do"
        s.detail = f"{done}/{n_test} predicted" if s.state != "to do" else ""
        return s
    saved, logged = _last_step(out / "train" / "checkpoints"), _logged_step(out / "train" / "log.jsonl")
    if saved or logged:
        total = cell_train_config(exp, group, split, seed, {k: Path(k) for k in exp.bases}).train.max_steps
        s.state, s.detail = "training", f"step {max(saved, logged)}" + (f"/{total}" if total else "")
        s.detail += f", resumes from {saved}" if saved < logged else ""
        s.train_frac = min(max(saved, logged) / total, 1.0) if total else 0.0
    return s


def matrix_status(exp: ExperimentConfig, only: list[str] | None = None) -> list[CellState]:
    """Every cell of the matrix (``only``: those rows) in the order the runner takes them, with
    an estimate of its seconds left: the mean wall time of the finished trained cells of its kind
    (:attr:`CellState.kind`), less the share already done (training counted against their
    training time, the rest, mostly decoding, against the remainder)."""
    from flythinker.data.longlamp import load_examples

    n_test = {
        split: len(load_examples(Path(exp.data) / split, split="test", limit=exp.limit_eval)) for split in exp.splits
    }
    states = [cell_state(exp, g, split, seed, n_test[split]) for g, split, seed in exp.cells(only)]
    pace: dict[str, list[tuple[float, float]]] = {}
    for s in states:
        if s.state == "done" and s.cell_s is not None and s.train_s:  # zero-shot cells train nothing
            pace.setdefault(s.kind, []).append((s.train_s, s.cell_s))
    for s in states:
        if s.state == "done":
            s.left_s = 0.0
        elif s.kind in pace:
            train = sum(t for t, _ in pace[s.kind]) / len(pace[s.kind])
            rest = max(sum(c for _, c in pace[s.kind]) / len(pace[s.kind]) - train, 0.0)
            s.left_s = train * (1 - s.train_frac) + rest * (1 - s.decode_frac)
    return states


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def print_status(exp: ExperimentConfig, only: list[str] | None = None, console=None) -> list[CellState]:
    """The status table and a one-line summary on the console; returns the states."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 110)
    states = matrix_status(exp, only)
    table = Table(title=f"{exp.out}: the matrix in run order")
    for col in ("#", "cell", "state", "pace of", "train", "cell wall", "left (est.)"):
        table.add_column(
            col,
            justify="right" if col in ("#", "train", "cell wall", "left (est.)") else "left",
            no_wrap=col in ("cell", "state"),
        )
    for i, s in enumerate(states, 1):
        state = f"{s.state} ({s.detail})" if s.detail else s.state
        table.add_row(
            str(i),
            s.cell,
            state,
            s.kind,
            _hms(s.train_s) if s.train_s is not None else "",
            _hms(s.cell_s) if s.cell_s is not None else "",
            "" if s.state == "done" else _hms(s.left_s),
        )
    console.print(table)
    done = sum(s.state == "done" for s in states)
    known = [s.left_s for s in states if s.state != "done" and s.left_s is not None]
    unknown = sorted({s.kind for s in states if s.state != "done" and s.left_s is None})
    line = f"{done} of {len(states)} cells finished"
    if done < len(states):
        line += f"; about {_hms(sum(known))} left for {len(known)} cell{'s' * (len(known) != 1)} at the finished cells' pace"
        if unknown:
            line += f" (no finished cell to estimate {', '.join(unknown)} from)"
        line += "; wall times include any pauses and jobs that ran beside them"
    console.print(line)
    return states
