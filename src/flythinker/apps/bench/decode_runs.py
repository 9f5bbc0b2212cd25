"""What `flythinker bench decode` times: one function per configuration, the interleaved timing
loop, and each configuration's peak memory.

Memory is reported per configuration as the weights it reads (G, R, or both) plus the working
memory its first timed run added at its peak: on a GPU ``torch.cuda.max_memory_allocated``
over the run, on a CPU the process's peak resident set (``VmHWM``, reset before the run through
``/proc/self/clear_refs``) over its resident set before it. A worker process (``shm``, ``gloo``)
is not counted in the working part; its R weights are the shared ones.
"""

from __future__ import annotations

import time
from pathlib import Path

from flythinker.apps.bench.machine import _threads, all_threads
from flythinker.errors import UserError

CAPTURED = ("generator_captured", "captured")
READS = {  # configuration -> the models whose weights it reads
    "generator": ("generator",),
    "reasoner": ("reasoner",),
    "think_then_generate": ("generator",),
    "hf_generate": ("generator",),
    "hf_generate_all_cores": ("generator",),
    "hf_generate_compiled": ("generator",),
    "generator_captured": ("generator",),
    "shared_base": ("generator",),
    "captured_shared_base": ("generator",),
}


class PeakMemory:
    """Working memory a run adds at its peak (bytes), on the GPU or in this process's RSS."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.base = 0

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            pass
        self.base = self._status("VmRSS")

    def stop(self) -> int | None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        peak = self._status("VmHWM")
        return max(0, peak - self.base) if peak else None


def weights_read(name: str, weight_bytes: dict) -> int:
    """Bytes of weights configuration ``name`` keeps and reads (see READS; default both models)."""
    return sum(weight_bytes[m] for m in READS.get(name, ("generator", "reasoner")))


class _TokenFeed:
    """A stand-in for G: R reads the same token ``steps`` times; its latents are dropped."""

    def __init__(self, tokens, steps: int):
        self.tokens, self.steps = tokens, steps

    def send_prefill(self, latents) -> None:
        pass

    def recv_tokens(self):
        self.steps -= 1
        return self.tokens if self.steps >= 0 else None

    def send_latent(self, latent) -> None:
        pass


def reasoner_alone(model, input_ids, attention_mask, new: int) -> None:
    """R's share of a decode, by the code a worker runs: its prefill and ``new - 1`` steps."""
    import torch

    from flythinker.decoding.steps import ReasonerRunner
    from flythinker.decoding.worker import serve_job

    with torch.no_grad():  # what R reads does not change its cost
        serve_job(ReasonerRunner(model), input_ids, attention_mask, _TokenFeed(input_ids[:, -1], new - 1))


def available_backends(model) -> list[str]:
    """Concurrent backends that can run this model here (GPU ones only with CUDA)."""
    from flythinker.decoding.concurrent import resolve_backend

    names = []
    for name in ("threads", "streams", "devices", "shm", "gloo"):
        try:
            resolve_backend(model, name)
            names.append(name)
        except UserError:
            pass
    return names


def build_runs(model, sft, cfg, decoders: dict, on_cpu: bool) -> dict:
    """name -> (threads, fn(ids, mask, new) -> tokens or None)."""
    eos = dict(eos_token_id=[], pad_token_id=0)
    per_model = cfg.threads_per_model

    def hf(ids, mask, new):
        out = model.generator.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
        return out[:, ids.shape[1] :]

    runs = {
        "generator": (per_model, lambda ids, mask, new: sft.generate(ids, mask, max_new_tokens=new, **eos)),
        "reasoner": (per_model, lambda ids, mask, new: reasoner_alone(model, ids, mask, new)),
        "sequential": (per_model, lambda ids, mask, new: model.generate(ids, mask, max_new_tokens=new, **eos)),
    }
    if on_cpu and per_model < all_threads():
        runs["sequential_all_threads"] = (all_threads(), runs["sequential"][1])
    for name, dec in decoders.items():  # a decoder sets its own threads
        runs[f"concurrent_{name}"] = (
            None,
            lambda ids, mask, new, dec=dec: dec.generate(ids, mask, max_new_tokens=new, **eos),
        )
    k = cfg.think_tokens
    runs["think_then_generate"] = (
        per_model,
        lambda ids, mask, new: sft.generate(ids, mask, max_new_tokens=new + k, **eos),
    )
    runs["hf_generate"] = (per_model, hf)
    if on_cpu and per_model < all_threads():  # what a user of plain SFT decoding runs
        runs["hf_generate_all_cores"] = (all_threads(), hf)
    runs.update(_captured_runs(model, sft, cfg, on_cpu, eos))
    return runs


def _captured_runs(model, sft, cfg, on_cpu: bool, eos: dict) -> dict:
    """transformers' compiled generate (GPU), the captured decoders and the shared-base ones."""
    per_model, runs = cfg.threads_per_model, {}
    if not on_cpu:  # the best transformers offers on a GPU: a static cache, the step compiled with CUDA graphs

        def hf_compiled(ids, mask, new):
            out = model.generator.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
                cache_implementation="static",
            )
            return out[:, ids.shape[1] :]

        runs["hf_generate_compiled"] = (per_model, hf_compiled)
    # opt-in: R on a second stream in the graph
    if not on_cpu and model.reasoning == "every_token" and "captured_overlap" in cfg.only:
        from flythinker.decoding.captured import CapturedDecoder

        overlap = CapturedDecoder(model, overlap=True)
        runs["captured_overlap"] = (
            per_model,
            lambda ids, mask, new: overlap.generate(ids, mask, max_new_tokens=new, **eos),
        )
    shared = shared_base_pair(model)
    if shared is not None:  # G and R as one base: both rows of a step in one forward, on every core
        threads = all_threads() if on_cpu else per_model
        runs["shared_base"] = (
            threads,
            lambda ids, mask, new: shared.generate(ids, mask, max_new_tokens=new, mode="shared_base", **eos),
        )
        if not on_cpu:
            from flythinker.decoding.captured import CapturedDecoder

            both = CapturedDecoder(shared, shared_base=True)
            runs["captured_shared_base"] = (
                threads,
                lambda ids, mask, new: both.generate(ids, mask, max_new_tokens=new, **eos),
            )
    for name, m in zip(CAPTURED, (sft, model)):  # static caches, one recorded step (CUDA graphs on a GPU)
        if on_cpu and not (cfg.full or name in cfg.only):  # eager on a CPU: no faster, only checked
            continue
        runs[name] = (
            per_model,
            lambda ids, mask, new, m=m: m.generate(ids, mask, max_new_tokens=new, mode="captured", **eos),
        )
    return runs


def shared_base_pair(model):
    """The pair as one base, or None: ``model`` itself where R is G's base already (the same
    weights, or LoRA adapters of one base), else, where R has G's shape, a FlyThinker whose R is
    G's own model (random benchmark pairs: "R = G's base"); one base in memory either way."""
    from flythinker.decoding.shared_base import _base_params, unshared_reason
    from flythinker.model import FlyThinker

    g, r = _base_params(model.generator), _base_params(model.reasoner)
    if {n: p.shape for n, p in g.items()} != {n: p.shape for n, p in r.items()}:
        return None
    if unshared_reason(model) is None and any(p.data_ptr() == r[n].data_ptr() for n, p in g.items()):
        return model
    shared = FlyThinker(model.generator, model.generator, lam=model.lam).eval()
    shared.fusion = model.fusion
    return shared if unshared_reason(shared) is None else None


def time_runs(runs: dict, inputs: dict, cfg, device, log) -> tuple[dict, dict, dict, dict]:
    """Interleaved repeats of every run at every batch: seconds, the first repeat's tokens, each
    run's working memory at its peak (bytes, first timed repeat), and the runs that failed their
    warm-up (name -> error; dropped from the rest, so one unsupported decoder leaves the table)."""
    times = {name: {key: [] for key in inputs} for name in runs}
    outputs, peaks, failed = {key: {} for key in inputs}, {key: {} for key in inputs}, {}
    memory, total, done, t_start = PeakMemory(device), (cfg.repeats + 1) * len(runs) * len(inputs), 0, time.time()
    for rep in range(-1, cfg.repeats):  # repeat -1 is the warm-up, with a few tokens (and the CUDA-graph recording)
        for name, (threads, fn) in runs.items():
            # a compiled generate records a graph per cache length: warm it up at the timed length
            new = cfg.new if rep >= 0 or name == "hf_generate_compiled" else min(4, cfg.new)
            for key, (ids, mask) in inputs.items():
                done += 1
                if name in failed:
                    continue
                what = f"repeat {rep + 1}/{cfg.repeats}" if rep >= 0 else "warm-up"
                log(f"[{done}/{total}, {time.time() - t_start:.0f} s] {what}  {name}  batch {ids.shape[0]}")
                with _threads(threads):
                    memory.start()
                    t0 = time.perf_counter()
                    try:
                        out = fn(ids, mask, new)
                    except Exception as e:  # noqa: BLE001 - reported, and the run leaves the table
                        if rep >= 0 or name in ("generator", "reasoner", "sequential"):
                            raise
                        failed[name] = f"{type(e).__name__}: {e}"
                        log(f"{name} failed its warm-up and is left out: {failed[name]}")
                        times.pop(name)
                        continue
                    _sync(device)
                    times[name][key].append(time.perf_counter() - t0)
                    peak = memory.stop()
                if rep == 0:
                    peaks[key][name] = peak
                    if out is not None:
                        outputs[key][name] = out.cpu()
    return times, outputs, peaks, failed


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
