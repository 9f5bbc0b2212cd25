"""`flythinker train` killed with SIGKILL mid-run, then `--resume`: the same loss curve and model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, SAMPLE, tiny_raw, write_yaml

pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="gitcommits sample not present")


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "flythinker.cli", "train", *map(str, args)]


def _train_log(run):
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    raw = tiny_raw(train={"epochs": 20, "save_every": 4, "keep_last": 2, "eval": False, "lr": 5e-3})
    cfg = write_yaml(tmp_path / "tiny.yaml", raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    ref = tmp_path / "ref"
    subprocess.run(_cli(cfg, "--out", ref), check=True, env=env, cwd=ROOT, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(cfg, "--out", run), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "step-00000008").is_dir():  # 2 complete checkpoints
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "result.json").exists() and not (run / "final").exists()
    killed_at = len(_train_log(run))
    assert killed_at < 80

    out = subprocess.run(_cli(cfg, "--out", run, "--resume"), env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from" in out.stdout

    a, b = _train_log(ref), _train_log(run)
    assert [r["step"] for r in b] == list(range(1, 81))
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6), ra["step"]
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-9)
    from safetensors.torch import load_file

    for part in ("generator", "reasoner"):
        wa = load_file(ref / "final" / part / "model.safetensors")
        wb = load_file(run / "final" / part / "model.safetensors")
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
