"""Concurrent decoders: the reference decoder's tokens exactly, clean workers, clear failures."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from tiny_models import VOCAB, left_padded_batch, tiny_pair

from flythinker.decoding import stream
from flythinker.decoding.concurrent import (
    ConcurrentDecoder,
    close_shared_decoders,
    default_threads,
    resolve_backend,
)
from flythinker.decoding.worker import ReasonerProcess, WorkerError
from flythinker.errors import UserError

BACKENDS = ["threads", "shm", "gloo"]  # the ones that run on CPU
PAIRS = [
    pytest.param(32, 32, "prefix", id="equal-prefix"),
    pytest.param(48, 32, "prefix", id="dR<dG-prefix"),
    pytest.param(32, 48, "linear", id="dR>dG-linear"),
]
FREE = dict(eos_token_id=[], pad_token_id=0)
SAMPLE = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=20, seed=3)


@pytest.fixture(scope="module", autouse=True)
def _close_workers():
    yield
    close_shared_decoders()


@contextmanager
def threads(n: int):
    """The reference decoder with the intra-op threads each model gets in a concurrent decoder:
    MKL's reduction order depends on it, and exactness means the same arithmetic."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def reference(model, ids, mask, **kw):
    with threads(default_threads()):
        return model.generate(ids, attention_mask=mask, mode="sequential", **kw)


def descendants() -> set[int]:
    """Live (or unreaped) processes started from this one, minus multiprocessing's helpers
    (resource tracker, fork server); forkserver workers are grandchildren, so walk the tree."""
    from multiprocessing import forkserver, resource_tracker

    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    helpers = {
        getattr(resource_tracker._resource_tracker, "_pid", None),
        getattr(forkserver._forkserver, "_forkserver_pid", None),
    }
    return found - helpers


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d_g,d_r,fusion", PAIRS)
def test_greedy_and_sampled_tokens_equal_the_reference(backend, d_g, d_r, fusion):
    model = tiny_pair(d_g=d_g, d_r=d_r, fusion=fusion, lam=1.0)
    for lengths in ([9], [4, 11, 7]):  # batch 1, and a left-padded batch
        ids, mask = left_padded_batch(lengths, seed=len(lengths))
        for kw in (FREE, {**FREE, **SAMPLE}):
            ref = reference(model, ids, mask, max_new_tokens=10, **kw)
            new = model.generate(ids, attention_mask=mask, max_new_tokens=10, mode="concurrent", backend=backend, **kw)
            assert torch.equal(new, ref), (lengths, kw)


@pytest.mark.parametrize("d_g,d_r,fusion", PAIRS)
def test_the_devices_own_concurrent_decoder_equals_the_reference(device, d_g, d_r, fusion):
    """R's step on a worker thread (CPU), or on a side CUDA stream (one GPU): the reference's tokens."""
    backend = "threads" if device.type == "cpu" else "streams"
    model = tiny_pair(d_g=d_g, d_r=d_r, fusion=fusion, lam=1.0, device=device)
    for lengths in ([9], [4, 11, 7]):
        ids, mask = left_padded_batch(lengths, seed=len(lengths), device=device)
        for kw in (FREE, {**FREE, **SAMPLE}):
            ref = reference(model, ids, mask, max_new_tokens=10, **kw)
            new = model.generate(ids, attention_mask=mask, max_new_tokens=10, mode="concurrent", backend=backend, **kw)
            assert new.device.type == device.type and torch.equal(new, ref), (lengths, kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_eos_and_streamer_match_the_reference(backend):
    model = tiny_pair(lam=1.0)
    ids, mask = left_padded_batch([5, 9], seed=7)
    free = reference(model, ids, mask, max_new_tokens=10, **FREE)
    eos = int(free[0, 2])  # row 0 stops at its third token, row 1 later or never

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.clone())

        def end(self):
            self.ended = True

    seen = {}
    for mode in ("sequential", "concurrent"):
        rec = Recorder()
        with threads(default_threads()):
            seen[mode] = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=10,
                eos_token_id=eos,
                pad_token_id=0,
                streamer=rec,
                mode=mode,
                backend=backend if mode == "concurrent" else None,
            )
        seen[mode + "_puts"], seen[mode + "_ended"] = rec.puts, rec.ended
    assert torch.equal(seen["concurrent"], seen["sequential"])
    assert (seen["concurrent"][0, 3:] == 0).all() and seen["concurrent_ended"]
    assert len(seen["concurrent_puts"]) == len(seen["sequential_puts"])
    assert all(torch.equal(a, b) for a, b in zip(seen["concurrent_puts"], seen["sequential_puts"]))


def test_lambda_zero_is_the_plain_generator_without_a_worker():
    model = tiny_pair(lam=0.0)
    ids, mask = left_padded_batch([6], seed=2)
    before = descendants()
    new = model.generate(ids, attention_mask=mask, max_new_tokens=8, mode="concurrent", backend="shm", **FREE)
    assert torch.equal(new, reference(model, ids, mask, max_new_tokens=8, **FREE))
    assert descendants() <= before


def test_backend_errors_are_user_errors():
    model = tiny_pair()
    assert resolve_backend(model, "auto") == "shm" and resolve_backend(model, None) == "shm"
    ids, mask = left_padded_batch([4], seed=0)
    for name, message in [
        ("bogus", "unknown concurrent backend"),
        ("streams", "one CUDA device"),
        ("devices", "two devices"),
        ("nccl", "torchrun"),
    ]:
        with pytest.raises(UserError, match=message):
            model.generate(ids, attention_mask=mask, max_new_tokens=2, mode="concurrent", backend=name)


def test_too_small_shared_memory_is_a_user_error(tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    from flythinker.decoding.worker import check_shared_memory

    model = tiny_pair(d_r=48, fusion="linear")
    check_shared_memory(model.reasoner, str(tmp_path))  # plenty of room
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=1 << 20, used=1 << 20, free=1000))
    with pytest.raises(UserError, match="--shm-size"):
        check_shared_memory(model.reasoner, str(tmp_path))


def test_parent_threads_are_restored_and_a_decoder_serves_several_models():
    first, second = tiny_pair(seed=0), tiny_pair(d_g=48, seed=5)
    ids, mask = left_padded_batch([6, 3], seed=4)
    previous = torch.get_num_threads()
    with ConcurrentDecoder(first, "shm") as dec:
        for model in (first, second, first):  # rebinding sends the other Reasoner to the worker
            dec.bind(model)
            new = dec.generate(ids, attention_mask=mask, max_new_tokens=6, **FREE)
            assert torch.equal(new, reference(model, ids, mask, max_new_tokens=6, **FREE))
        assert torch.get_num_threads() == previous
        # an in-place weight update reaches the worker through shared memory, without a reload
        with torch.no_grad():
            first.reasoner.model.norm.weight.mul_(3.0)
        new = dec.generate(ids, attention_mask=mask, max_new_tokens=6, **FREE)
        assert torch.equal(new, reference(first, ids, mask, max_new_tokens=6, **FREE))


@pytest.mark.parametrize("backend", ["shm", "gloo"])
def test_close_leaves_no_process_no_shared_memory_and_no_spinning(backend):
    model = tiny_pair(lam=1.0)
    ids, mask = left_padded_batch([7], seed=1)
    before, shm_before = descendants(), set(os.listdir("/dev/shm"))
    dec = ConcurrentDecoder(model, backend)
    pid = dec.reasoner.process.pid
    semaphores = [
        s._semlock.name
        for s in (getattr(dec.reasoner.link, "tokens_ready", None), getattr(dec.reasoner.link, "latent_ready", None))
        if s is not None
    ]
    dec.generate(ids, attention_mask=mask, max_new_tokens=20, **FREE)
    used = cpu_seconds(pid)
    time.sleep(0.5)  # idle between decodes: the worker must sleep, not spin
    assert cpu_seconds(pid) - used < 0.1
    dec.close()
    del dec
    assert not Path(f"/proc/{pid}").exists() and descendants() <= before
    assert pid not in {p.pid for p in multiprocessing.active_children()}
    left = set(os.listdir("/dev/shm")) - shm_before
    assert not [n for n in left if "flythinker" in n or str(pid) in n or str(os.getpid()) in n]
    assert not [n for n in semaphores if os.path.exists(f"/dev/shm/sem.{n.lstrip('/')}")]


class Killer:
    """A streamer that kills the worker process after ``after`` tokens."""

    def __init__(self, pid: int, after: int = 3):
        self.pid, self.after, self.n = pid, after, 0

    def put(self, value):
        self.n += 1
        if self.n == 1 + self.after:  # the first put is the prompt
            os.kill(self.pid, signal.SIGKILL)

    def end(self):
        pass


@pytest.mark.parametrize("backend", ["shm", "gloo"])
def test_a_worker_that_dies_mid_decode_is_a_clear_error_not_a_hang(backend):
    model = tiny_pair(lam=1.0)
    ids, mask = left_padded_batch([7], seed=1)
    before = descendants()
    with ConcurrentDecoder(model, backend) as dec:
        pid = dec.reasoner.process.pid
        t0 = time.perf_counter()
        with pytest.raises(WorkerError, match=f"pid {pid}"):
            dec.generate(ids, attention_mask=mask, max_new_tokens=200, streamer=Killer(pid), **FREE)
        assert time.perf_counter() - t0 < 5
        assert not Path(f"/proc/{pid}").exists()
        # the next call starts a new worker
        new = dec.generate(ids, attention_mask=mask, max_new_tokens=6, **FREE)
        assert torch.equal(new, reference(model, ids, mask, max_new_tokens=6, **FREE))
        assert dec.reasoner.process.pid != pid
    assert descendants() <= before
    with pytest.raises(UserError, match="closed"):
        dec.generate(ids, attention_mask=mask, max_new_tokens=2)


def test_an_error_inside_the_worker_comes_back_with_its_traceback():
    model = tiny_pair(lam=1.0)
    model.reasoner.model.embed_tokens = torch.nn.Embedding(3, 32)  # R cannot read token ids ≥ 3
    ids, mask = left_padded_batch([7], seed=1)
    dec = ConcurrentDecoder(model, "shm")
    with pytest.raises(WorkerError, match="IndexError"):
        dec.generate(ids, attention_mask=mask, max_new_tokens=4, **FREE)
    assert dec.reasoner is None  # dropped: the next call would start a new worker
    dec.close()
    with pytest.raises(WorkerError, match="could not start"):  # a worker that fails at start-up
        ReasonerProcess(divmod, (0,))


def test_interrupted_decode_keeps_the_worker_in_step():
    model = tiny_pair(lam=1.0)
    ids, mask = left_padded_batch([5, 8], seed=9)

    class Interrupt:
        n = 0

        def put(self, value):
            self.n += 1
            if self.n == 4:
                raise KeyboardInterrupt

        def end(self):
            pass

    dec = ConcurrentDecoder(model, "shm")
    try:
        with pytest.raises(KeyboardInterrupt):
            dec.generate(ids, attention_mask=mask, max_new_tokens=10, streamer=Interrupt(), **FREE)
        assert not dec.closed
        new = dec.generate(ids, attention_mask=mask, max_new_tokens=10, **FREE)
        assert torch.equal(new, reference(model, ids, mask, max_new_tokens=10, **FREE))
    finally:
        dec.close()


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt here even when pytest was started with SIGINT ignored (as a
    background job of a non-interactive shell is, where Python then installs no handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("backend", ["shm", "gloo", "threads"])
def test_ctrl_c_mid_decode_interrupts_promptly_and_the_decoder_recovers(backend, ctrl_c_raises):
    model = tiny_pair(lam=1.0)
    ids, mask = left_padded_batch([6], seed=2)
    with ConcurrentDecoder(model, backend) as dec:
        dec.generate(ids, attention_mask=mask, max_new_tokens=2, **FREE)
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        t0 = time.perf_counter()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            dec.generate(ids, attention_mask=mask, max_new_tokens=20_000, **FREE)  # ~a minute
        assert time.perf_counter() - t0 < 5
        new = dec.generate(ids, attention_mask=mask, max_new_tokens=6, **FREE)
        assert torch.equal(new, reference(model, ids, mask, max_new_tokens=6, **FREE))


def word_tokenizer():
    """A whole-word tokenizer over the tiny models' vocabulary: id i <-> 'w{i}', and id 2 (the tiny
    models' EOS) <-> '<|endoftext|>', so that a Qwen2 tokenizer class loads it unchanged."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {("<|endoftext|>" if i == 2 else f"w{i}"): i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="<|endoftext|>")


@pytest.mark.parametrize("backend", ["threads", "shm"])
def test_stream_yields_the_decoded_text_and_stops_early_cleanly(backend):
    model, tok = tiny_pair(lam=1.0), word_tokenizer()
    ids, mask = left_padded_batch([6], seed=3)
    kw = dict(max_new_tokens=12, mode="concurrent", backend=backend, **FREE)
    expected = tok.decode(reference(model, ids, mask, max_new_tokens=12, **FREE)[0], skip_special_tokens=True)
    assert "".join(stream(model, tok, ids, mask, **kw)) == expected
    assert "".join(stream(model, tok, " ".join(f"w{i}" for i in ids[0].tolist()), **kw)) == expected
    pieces = stream(model, tok, ids, mask, **kw)
    next(pieces)
    pieces.close()  # stop reading: the decode is cancelled, the worker stays usable
    assert "".join(stream(model, tok, ids, mask, **kw)) == expected
