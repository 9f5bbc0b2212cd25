"""Faults lose nothing: SIGKILL during training or generation, then rerun, gives the same result.

* training: ``flythinker train`` (tiny config, a checkpoint every step) is killed with SIGKILL at
  seeded random moments, one kill forced inside a checkpoint write; ``--resume`` always continues
  from the newest complete checkpoint, and the loss curve equals an uninterrupted run's;
* generation: ``flythinker generate`` is killed likewise, one kill forced in the middle of a line;
  rerunning skips the ids already written and the file equals an uninterrupted (greedy) run's.

Covered elsewhere and not repeated here: a NaN/inf loss stops training with a message and keeps
the last good checkpoint (tests/train/test_train_run.py::test_nan_loss_stops_and_keeps_the_last_good_checkpoint);
a concurrent decoder whose partner process dies reports it and leaves no process or shared-memory
segment behind (tests/decoding/test_concurrent.py::test_a_worker_that_dies_mid_decode_is_a_clear_error_not_a_hang
and ::test_close_leaves_no_process_no_shared_memory_and_no_spinning).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _train_helpers():
    """tests/train/helpers.py, loaded by path (putting tests/train on sys.path would shadow conftest)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_helpers", ROOT / "tests" / "train" / "helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_h = _train_helpers()
SAMPLE, tiny_raw, write_yaml = _h.SAMPLE, _h.tiny_raw, _h.write_yaml

KILLS = 10
SEED = 1234

# Run the CLI with one function replaced by a version that kills its own process half-way.
_FORCED_KILL = """
import json, os, signal, sys
import flythinker.{module} as M

calls = [0]
def {name}(path, obj):
    calls[0] += 1
    if calls[0] < {after}:
        return ORIGINAL(path, obj)
    data = {payload}
    cut = len(data) // 2
    cut -= data[cut - 1:cut] == b"\\n"  # two equally long lines: stop mid-line, not between them
    with open(path, "ab") as f:  # half the bytes reach the disk, then the process dies
        f.write(data[:cut]); f.flush(); os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
ORIGINAL, M.{name} = M.{name}, {name}
from flythinker.cli import main
main(sys.argv[1:])
"""


def _env(tmp_path_factory) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "FLYTHINKER_CACHE": str(tmp_path_factory.getbasetemp() / "faults-cache"),
    }


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "flythinker.cli", *map(str, args)]


def _kill_after_progress(cmd, env, progress, rng, log: Path, timeout: float = 120) -> bool:
    """Start ``cmd``; once ``progress()`` grows, wait a random 0–0.3 s and SIGKILL it.
    Returns False when the process finished before it could be killed."""
    start = progress()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while progress() <= start:
            if proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode == -signal.SIGKILL


# --- training -------------------------------------------------------------------------------------------


def _train_steps(run: Path) -> list[dict]:
    f = run / "log.jsonl"
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
        if row.get("kind") == "train":
            rows.append(row)
    return rows


@pytest.mark.slow
@pytest.mark.skipif(not SAMPLE.is_dir(), reason="gitcommits sample not present")
def test_training_killed_at_random_resumes_to_the_uninterrupted_curve(tmp_path, tmp_path_factory):
    from flythinker.train.checkpoint import list_checkpoints, read_state

    # 64 steps: room for 10 kills (each attempt runs a few steps) before the run could finish
    raw = tiny_raw(train={"epochs": 16, "save_every": 1, "keep_last": 2, "eval": False, "lr": 5e-3})
    cfg = write_yaml(tmp_path / "tiny.yaml", raw)
    env, rng = _env(tmp_path_factory), random.Random(SEED)

    ref = tmp_path / "ref"
    subprocess.run(_cli("train", cfg, "--out", ref), check=True, env=env, cwd=ROOT, capture_output=True)
    total = len(_train_steps(ref))
    assert total == 64

    run = tmp_path / "killed"
    kills, mid_write, resumed_from = 0, 0, []
    forced = _FORCED_KILL.format(
        module="train.checkpoint", name="_write_json", after=3, payload="json.dumps(obj).encode()"
    )
    for i in range(KILLS):
        before = [p.name for p in list_checkpoints(run)]
        before_step = read_state(run / "checkpoints" / before[-1])["step"] if before else None
        args = ("train", cfg, "--out", run, "--resume")
        log = tmp_path / f"attempt{i}.log"
        if i == 4:  # forced: die while writing trainer_state.json, the last file of a checkpoint
            with open(log, "w") as out:
                proc = subprocess.run(
                    [sys.executable, "-c", forced, *args[0:]], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
                )
            assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
            assert list((run / "checkpoints").glob(".step-*.tmp")), "no half-written checkpoint was left"
            killed = True
        else:
            killed = _kill_after_progress(_cli(*args), env, lambda: len(_train_steps(run)), rng, log)
        text = log.read_text()
        if before:  # --resume picked the newest complete checkpoint, not the half-written one
            assert f"resuming from {run / 'checkpoints' / before[-1]}" in text, text[-2000:]
            resumed_from.append(before_step)
        if not killed:
            break
        kills += 1
        mid_write += bool(list((run / "checkpoints").glob(".step-*.tmp")))
        for ckpt in list_checkpoints(run):  # every listed checkpoint is complete and readable
            assert (ckpt / "model.safetensors").is_file() and read_state(ckpt)["step"] >= 1
    assert kills >= KILLS, f"only {kills} kills landed before the run finished"
    assert resumed_from == sorted(resumed_from) and not (run / "final").exists()

    out = subprocess.run(
        _cli("train", cfg, "--out", run, "--resume"), env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    a, b = _train_steps(ref), _train_steps(run)
    assert [r["step"] for r in b] == list(range(1, total + 1))  # each step once: nothing lost or doubled
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6), ra["step"]
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-9)
    print(
        f"\ntraining: {kills} SIGKILLs survived ({mid_write} left a checkpoint half-written), "
        f"resumed from steps {resumed_from}; {total} steps equal the uninterrupted run"
    )


# --- generation -----------------------------------------------------------------------------------------


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n") if path.is_file() else []


def _complete(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


@pytest.fixture(scope="module")
def decisive_model(tmp_path_factory, sample_tokenizer):
    """A tiny FlyThinker whose predictions differ from row to row, saved: the folder path.

    The resumed file is compared byte for byte with an uninterrupted run's, which catches a record
    in the wrong place only if records differ. With the default 0.02 init all 160 predictions
    below began alike (4 distinct texts); with 0.4 there are 143, and the closest call between the
    top two logits is 2e-4, far above the float noise between two runs of the same batch.
    """
    from tiny_models import save_tiny_flythinker

    return save_tiny_flythinker(tmp_path_factory.mktemp("decisive") / "tiny", sample_tokenizer, init_std=0.4)


@pytest.mark.slow
def test_generation_killed_at_random_resumes_to_the_uninterrupted_file(tmp_path, tmp_path_factory, decisive_model):
    rows = [
        {
            "id": f"ex-{i}",
            "user_id": f"u{i % 3}",
            "input": f"Write commit message number {i}.",
            "output": "Fix the reader.",
            "profile": [{"title": "Old", "text": f"Handle case {j}."} for j in range(3)],
        }
        for i in range(160)
    ]
    data = tmp_path / "test.json"
    data.write_text(json.dumps(rows))
    env, rng = _env(tmp_path_factory), random.Random(SEED)
    common = ("--model", decisive_model, "--data", data, "--greedy", "--batch-size", "2", "--max-new-tokens", "16")

    ref = tmp_path / "ref.jsonl"
    subprocess.run(_cli("generate", *common, "--out", ref), check=True, env=env, cwd=ROOT, capture_output=True)
    assert _complete(ref) == len(rows)
    assert len({json.loads(line)["prediction"] for line in _lines(ref)[:-1]}) > len(rows) // 2  # rows differ

    out = tmp_path / "preds.jsonl"
    kills, torn = 0, 0
    forced = _FORCED_KILL.format(
        module="data.predictions", name="append_records", after=2, payload="M.encode_records(obj)"
    )  # the product's own bytes
    for i in range(KILLS):
        done_before = _complete(out)
        log = tmp_path / f"attempt{i}.log"
        if i == 3:  # forced: die with half a batch's line written
            with open(log, "w") as f:
                proc = subprocess.run(
                    [sys.executable, "-c", forced, "generate", *common, "--out", out],
                    env=env,
                    cwd=ROOT,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                )
            assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
            assert not out.read_bytes().endswith(b"\n"), "the forced kill left no torn line"
            killed = True
        else:
            killed = _kill_after_progress(
                _cli("generate", *common, "--out", out), env, lambda: _complete(out), rng, log
            )
        if not killed:
            break
        kills += 1
        torn += not out.read_bytes().endswith(b"\n")
        complete = [json.loads(line) for line in _lines(out)[:-1]]  # every whole line is a record
        ids = [r["id"] for r in complete]
        assert len(ids) == len(set(ids)), "an id was written twice"
        assert len(complete) >= done_before, "a finished line was lost"
    assert kills >= KILLS, f"only {kills} kills landed before generation finished"

    subprocess.run(_cli("generate", *common, "--out", out), check=True, env=env, cwd=ROOT, capture_output=True)
    assert out.read_bytes() == ref.read_bytes()  # same records, same order, no duplicate, no torn line
    print(
        f"\ngeneration: {kills} SIGKILLs survived ({torn} left a torn last line); "
        f"{len(rows)} predictions equal the uninterrupted run"
    )
