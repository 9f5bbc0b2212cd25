"""FlyThinker on vLLM gives the reference decoder's tokens: chunked prefill, batching, preemption,
prefix caching, λ 0 and 0.5, d_R < d_G and d_R = d_G, four families and a mixed pair, the fusion's
options, eager and compiled (``pytest -m vllm tests/vllm_engine``, in a venv with vLLM: docs/vllm.md).

Each engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that the two controls
can break the latent hand-over and show that the comparison catches it.
"""

from __future__ import annotations

import gc
import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
vllm = pytest.importorskip("vllm", reason="vLLM is not installed (docs/vllm.md)")

import torch  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402
from vllm_pairs import make_pair, prompts, reference_greedy, reference_logprobs  # noqa: E402

pytestmark = pytest.mark.vllm
N_NEW = 10
TOL = 1e-4  # |Δ log-probability|, fp32


def engine(folder, chunk: int, **kw) -> LLM:
    kw = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20, "max_num_seqs": 8, "dtype": "float32", **kw}
    return LLM(
        model=str(folder),
        max_model_len=256,
        skip_tokenizer_init=True,
        max_num_batched_tokens=chunk,
        seed=0,
        **kw,
    )


def run(llm: LLM, batch: list[list[int]], n: int = N_NEW, **sampling):
    params = SamplingParams(max_tokens=n, ignore_eos=True, logprobs=0, **{"temperature": 0.0, **sampling})
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[next(iter(d.values())).logprob for d in o.outputs[0].logprobs] for o in outs]
    return tokens, logprobs, outs


def assert_exact(model, llm, batch, n: int = N_NEW):
    tokens, logprobs, outs = run(llm, batch, n)
    for p, got, lp in zip(batch, tokens, logprobs):
        assert got == reference_greedy(model, p, n), f"prompt of {len(p)} tokens"
        ours = reference_logprobs(model, p, got)
        assert max(abs(a - b) for a, b in zip(ours, lp)) <= TOL
    return outs


def close(llm: LLM) -> None:
    llm.llm_engine.engine_core.shutdown()  # vLLM's worker processes end with it
    del llm
    gc.collect()


@pytest.mark.parametrize(
    "g_family, r_family, d_g, d_r, lam, chunk",
    [
        ("llama", "llama", 256, 128, 0.5, 8),
        ("llama", "llama", 256, 128, 0.5, 16),
        ("llama", "llama", 256, 128, 0.5, 256),  # the whole prompt in one step
        ("llama", "llama", 256, 128, 0.0, 16),  # λ 0: SFT, R never runs
        ("qwen2", "qwen2", 256, 256, 0.5, 8),  # d_R = d_G
        ("qwen3", "qwen3", 256, 128, 0.5, 16),
        ("mistral", "mistral", 256, 128, 0.5, 8),  # a sliding window of 4 tokens
        ("qwen2", "llama", 256, 128, 0.5, 16),  # a mixed pair
    ],
)
def test_tokens_equal_the_reference_decoder(tmp_path, g_family, r_family, d_g, d_r, lam, chunk):
    model, folder = make_pair(tmp_path, g_family, r_family, d_g, d_r, lam)
    llm = engine(folder, chunk)
    assert_exact(model, llm, prompts((1, 7, 23, 40)))  # mixed lengths in one batch, chunked
    close(llm)


def test_the_fusion_options_travel_linear_gate_and_standardised_latent(tmp_path):
    from flythinker.model import FlyThinker
    from flythinker.tiny import family_config, random_lm

    g = random_lm(family_config("llama", hidden=256, heads=4, kv_heads=1, vocab=512, init_std=0.15, attn=None), 0)
    r = random_lm(family_config("llama", hidden=128, heads=2, kv_heads=1, vocab=512, init_std=0.15, attn=None), 1)
    model = FlyThinker(generator=g.eval(), reasoner=r.eval(), lam=0.5, fusion="linear", gate="vector").eval()
    model.fusion.enable_centering(standardize=True)
    with torch.no_grad():
        torch.manual_seed(3)
        model.fusion.gate.normal_(0.0, 1.0)
        model.fusion.proj.weight.normal_(0.0, 0.1)
        model.fusion.latent_mean.normal_(0.0, 0.5)
        model.fusion.latent_scale.uniform_(0.5, 2.0)
        model.fusion.latent_mean_set.fill_(True)
    model.save_pretrained(tmp_path / "run")
    from flythinker.apps.vllm.export import export_vllm

    folder = export_vllm(tmp_path / "run", tmp_path / "vllm")
    loaded = FlyThinker.from_pretrained(tmp_path / "run").eval()
    llm = engine(folder, 8)
    assert_exact(loaded, llm, prompts((3, 19)))
    close(llm)


def test_controls_a_lost_latent_breaks_equality(tmp_path, monkeypatch):
    """Dropping z at decode, or ignoring a prefill chunk's carried state, must change the tokens."""
    from flythinker.apps.vllm import model as vm

    model, folder = make_pair(tmp_path, "llama", "llama", 256, 128, 0.5)
    llm = engine(folder, 8, enable_prefix_caching=False)
    batch = prompts((7, 23, 40), seed=1)
    assert_exact(model, llm, batch)
    shift = vm.LatentShift.shift

    def drop_at_decode(self, z, prev, has_prev):
        shift(self, z, prev, has_prev)
        n = vm.get_forward_context().attn_metadata[self.prefix].num_decode_tokens
        prev[:n] = 0
        has_prev[:n] = 0

    def ignore_carried_state(self, z, prev, has_prev):
        md = vm.get_forward_context().attn_metadata[self.prefix]
        if md.has_initial_states_p is not None:
            md.has_initial_states_p = torch.zeros_like(md.has_initial_states_p)
        shift(self, z, prev, has_prev)

    for control in (drop_at_decode, ignore_carried_state):
        monkeypatch.setattr(vm.LatentShift, "shift", control)
        tokens, _, _ = run(llm, batch)
        assert tokens != [reference_greedy(model, p, N_NEW) for p in batch], control.__name__
    monkeypatch.setattr(vm.LatentShift, "shift", shift)
    close(llm)


def test_a_prefix_cache_hit_equals_a_miss(tmp_path):
    model, folder = make_pair(tmp_path, "llama", "llama", 256, 128, 0.5)
    llm = engine(folder, 64, enable_prefix_caching=True)
    shared = prompts((150,), seed=2)[0]  # past one cache block (128 tokens here: vLLM's common page)
    first = shared + prompts((5,), seed=3)[0]
    second = shared + prompts((9,), seed=4)[0]
    miss = assert_exact(model, llm, [first])
    hit = assert_exact(model, llm, [second])
    assert not miss[0].num_cached_tokens and hit[0].num_cached_tokens >= 128, "the second request hit the cache"
    close(llm)


def test_preempted_requests_are_recomputed_exactly(tmp_path):
    model, folder = make_pair(tmp_path, "llama", "llama", 256, 128, 0.5)
    # room for a few blocks of 128 tokens only: requests admitted with one block each need a second
    # one as they decode past token 128, and there is none left for them all
    llm = engine(folder, 32, kv_cache_memory_bytes=1600 << 10, enable_prefix_caching=False)
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    preempted = []
    preempt = scheduler._preempt_request
    scheduler._preempt_request = lambda request, *a, **k: (
        preempted.append(request.request_id),
        preempt(request, *a, **k),
    )[1]
    assert_exact(model, llm, prompts((110, 115, 120, 112, 118, 111), seed=5), n=24)
    assert preempted, "no request was preempted: shrink the cache"
    close(llm)


def test_sampled_tokens_carry_the_reference_log_probabilities(tmp_path):
    model, folder = make_pair(tmp_path, "qwen2", "llama", 256, 128, 0.5)
    llm = engine(folder, 16)
    batch = prompts((4, 17, 33), seed=6)
    # (a per-request seed fails on vLLM's CPU build, "CPU Generator does not use offset": the
    # engine's seed is used)
    tokens, logprobs, _ = run(llm, batch, temperature=0.9, top_p=0.95)
    assert tokens != [reference_greedy(model, p, N_NEW) for p in batch]  # it sampled
    for p, got, lp in zip(batch, tokens, logprobs):
        assert max(abs(a - b) for a, b in zip(reference_logprobs(model, p, got), lp)) <= TOL
    close(llm)


@pytest.mark.slow
def test_compiled_equals_the_reference(tmp_path):
    model, folder = make_pair(tmp_path, "llama", "llama", 256, 128, 0.5)
    llm = engine(folder, 16, enforce_eager=False)
    assert_exact(model, llm, prompts((1, 7, 23, 40)))
    close(llm)


@pytest.mark.slow
def test_tensor_parallel_2_equals_the_reference(tmp_path):
    """Two ranks on this machine's two cores (one core each, bound by hand: vLLM's CPU build binds
    a rank to a NUMA node, and there is one)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    script = Path(__file__).with_name("tp_check.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert "EXACT" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_bf16_follows_the_reference_within_bf16_rounding(tmp_path):
    """In bf16 the two engines' kernels round differently, so tokens may part ways. Each token vLLM
    picks is scored by the fp32 reference; vLLM's bf16 log-probabilities stay as close to it as our
    own bf16 forward's (within twice its largest deviation, and 0.05 nats)."""
    model, folder = make_pair(tmp_path, "llama", "llama", 256, 128, 0.5)
    half = make_pair(tmp_path / "bf16", "llama", "llama", 256, 128, 0.5)[0].to(torch.bfloat16)
    llm = engine(folder, 16, dtype="bfloat16")
    batch = prompts((5, 23), seed=7)
    tokens, logprobs, _ = run(llm, batch)
    for p, got, lp in zip(batch, tokens, logprobs):
        exact = reference_logprobs(model, p, got)
        ours = max(abs(a - b) for a, b in zip(exact, reference_logprobs(half, p, got)))
        theirs = max(abs(a - b) for a, b in zip(exact, lp))
        print(f"bf16 |Δ log p| against fp32: ours {ours:.3f}, vLLM {theirs:.3f}")
        assert theirs <= 2 * ours + 0.05
    close(llm)
