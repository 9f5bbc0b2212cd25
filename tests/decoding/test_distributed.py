"""One model per rank (torch.distributed, gloo on CPU): the reference decoder's tokens exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from tiny_models import left_padded_batch, tiny_pair

from flythinker.decoding.worker import context

KW = dict(max_new_tokens=9, eos_token_id=[], pad_token_id=0)
SAMPLE = dict(do_sample=True, temperature=0.8, top_p=0.9, seed=11)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int, results) -> None:
    """What a user's script does on each rank under torchrun."""
    import torch.distributed as dist

    from flythinker.decoding.distributed import launch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = tiny_pair(d_g=48, d_r=32, lam=1.0)  # same seed on both ranks: the same weights
        ids, mask = left_padded_batch([5, 8], seed=2)
        decoder = launch(model)
        if decoder is not None:
            with decoder:
                # lists: a tensor in a queue is shared memory, gone if this process exits first
                results.put(("greedy", model.generate(ids, mask, mode="concurrent", backend=decoder, **KW).tolist()))
                results.put(
                    ("sampled", model.generate(ids, mask, mode="concurrent", backend=decoder, **KW, **SAMPLE).tolist())
                )
        results.put((f"rank {rank} done", None))
    finally:
        dist.destroy_process_group()


def test_launch_under_two_ranks_equals_the_reference():
    ctx = context()  # forkserver: fast once its server runs
    results, port = ctx.Queue(), free_port()
    ranks = [ctx.Process(target=rank_main, args=(r, port, results)) for r in (0, 1)]
    for p in ranks:
        p.start()
    got = dict(results.get(timeout=120) for _ in range(4))
    for p in ranks:
        p.join(30)
    assert [p.exitcode for p in ranks] == [0, 0]
    assert {"rank 0 done", "rank 1 done"} <= set(got)
    model = tiny_pair(d_g=48, d_r=32, lam=1.0)
    ids, mask = left_padded_batch([5, 8], seed=2)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' setting: the same arithmetic
    try:
        assert got["greedy"] == model.generate(ids, mask, **KW).tolist()
        assert got["sampled"] == model.generate(ids, mask, **KW, **SAMPLE).tolist()
    finally:
        torch.set_num_threads(previous)


TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
SCRIPT = """
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from tiny_models import left_padded_batch, tiny_pair
from flythinker.decoding.distributed import launch

torch.set_num_threads(1)
dist.init_process_group("gloo")
model = tiny_pair(d_g=48, d_r=32, lam=1.0)
ids, mask = left_padded_batch([5, 8], seed=2)
decoder = launch(model)
if decoder is not None:
    with decoder:
        print(json.dumps(model.generate(ids, mask, mode="concurrent", backend=decoder, **{kw!r}).tolist()))
dist.destroy_process_group()
"""


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed next to python")
def test_a_script_under_torchrun_equals_the_reference(tmp_path):
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "decode.py").write_text(SCRIPT.format(tests=tests, kw=KW))
    out = subprocess.run(
        [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), str(tmp_path / "decode.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    model = tiny_pair(d_g=48, d_r=32, lam=1.0)
    ids, mask = left_padded_batch([5, 8], seed=2)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert json.loads(out.stdout.strip().splitlines()[-1]) == model.generate(ids, mask, **KW).tolist()
    finally:
        torch.set_num_threads(previous)
