"""Two-process DDP on CPU (gloo, via torchrun): same losses as one process, replicas in sync."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, SAMPLE, tiny_raw, write_yaml

from flythinker.train.config import load_config
from flythinker.train.trainer import train

pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="gitcommits sample not present")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~15 s on an idle 2-core machine, ~30 s on a busy one
def test_two_process_ddp_matches_one_process(tmp_path):
    # effective batch 4 = 2 per device × 2 devices, or 2 × 2 accumulation steps on one device
    raw = tiny_raw(train={"epochs": 2, "batch_size": 2, "effective_batch_size": 4, "save_every": 2})
    cfg_file = write_yaml(tmp_path / "ddp.yaml", raw)
    single = train(load_config(cfg_file), tmp_path / "single")

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "flythinker.cli",
        "train",
        str(cfg_file),
        "--out",
        str(tmp_path / "ddp"),
    ]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "2 process(es) × batch 2 × accumulation 1" in out.stdout

    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["steps"] == single.steps == 4
    assert ddp["losses"] == pytest.approx(single.losses, rel=1e-4)
    assert ddp["dev_losses"] == pytest.approx(single.dev_losses, rel=1e-4)
    a, b = ddp["replica_fingerprints"]
    assert a == b  # both ranks hold the same weights
    ckpt = tmp_path / "ddp" / "checkpoints" / "step-00000004"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    from safetensors.torch import load_file

    for part in ("generator", "reasoner"):
        wa = load_file(tmp_path / "single" / "final" / part / "model.safetensors")
        wb = load_file(tmp_path / "ddp" / "final" / part / "model.safetensors")
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
