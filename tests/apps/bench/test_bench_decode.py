"""`flythinker bench decode` and scripts/gpu_bench_decode.py (the parts that run without a GPU)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from tiny_models import ROOT

from flythinker.apps.bench.decode import DecodeBenchConfig, run_decode_bench
from flythinker.errors import UserError
from flythinker.tiny import qwen2_config, random_pair

TINY = dict(
    hidden=32,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=64,
    vocab=97,
    prompt=6,
    new=5,
    think_tokens=3,
    repeats=2,
    throughput_batch=3,
)


def gpu_script():
    spec = importlib.util.spec_from_file_location("gpu_bench_decode", ROOT / "scripts" / "gpu_bench_decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_reports_every_decoder_with_equal_tokens():
    result = run_decode_bench(DecodeBenchConfig(**TINY, backends=["threads", "shm"], full=True), log=lambda m: None)
    ms = result["ms_per_token"]
    for key in (
        "generator",
        "reasoner",
        "sequential",
        "concurrent",
        "hf_generate",
        "think_then_generate",
        "concurrent_threads",
        "concurrent_shm",
        "captured",
        "generator_captured",
        "shared_base",
    ):
        assert ms[key] > 0 and result["tokens_per_s"][key] > 0
    assert result["best_backend"] in ("threads", "shm")
    assert ms["concurrent"] == min(ms["concurrent_threads"], ms["concurrent_shm"])
    assert result["tokens_equal"] and all(result["tokens_equal"].values())
    assert set(result["tokens_equal"]) >= {
        "hf_generate_vs_generator_latency",
        "concurrent_shm_vs_sequential_throughput",
        "captured_vs_sequential_latency",
        "generator_captured_vs_generator_throughput",
    }
    wb, memory = result["weight_bytes"], result["memory_bytes"]["latency"]
    assert memory["generator"] >= wb["generator"] and memory["sequential"] >= wb["generator"] + wb["reasoner"]
    assert memory["reasoner"] < memory["sequential"] and set(memory) == set(result["samples_s"])
    assert len(result["samples_s"]["sequential"]["latency"]) == 1 + TINY["repeats"]  # warm-up + repeats
    r = result["ratios"]
    assert r["concurrent_over_sequential"] == pytest.approx(ms["concurrent"] / ms["sequential"])
    assert set(result["targets_met"]) >= {"concurrent_over_max_single", "throughput_over_batch1"}


def test_cli_writes_json_and_refuses_bad_settings(tmp_path, capsys):
    from flythinker.cli import main

    out = tmp_path / "bench.json"
    args = ["bench", "decode", "--json", str(out), "--backends", "threads", "--only", "hf_generate"]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    main(args)
    result = json.loads(out.read_text())
    assert set(result["ms_per_token"]) == {
        "generator",
        "reasoner",
        "sequential",
        "concurrent_threads",
        "hf_generate",
        "concurrent",
    }
    io = capsys.readouterr()
    assert "concurrent_threads" in io.out
    assert "repeat 2/2  sequential  batch 3" in io.err and "warm-up  generator  batch 1" in io.err  # progress
    with pytest.raises(SystemExit) as e:
        main(["bench", "decode", "--new", "0"])
    assert e.value.code == 2 and "--new must be ≥ 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "decode", "--backends", "nope", *args[6:]])
    assert "unknown concurrent backend" in capsys.readouterr().err


def test_model_config_checks():
    with pytest.raises(UserError, match="heads"):
        qwen2_config(hidden=30, layers=1, heads=4, kv_heads=2, intermediate=8, vocab=10)
    cfg = qwen2_config(hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1536, vocab=32000)
    with torch.device("meta"):
        model = random_pair(cfg, cfg, lam=0.5, device="meta")
    n = sum(p.numel() for p in model.generator.parameters())
    assert 38e6 < n < 42e6  # the default benchmark models are ≈40M parameters each
    assert model.generator.generation_config.eos_token_id is None  # nothing stops a run early


@pytest.mark.parametrize("pair,g_params,r_params", [("7b+1.5b", 7.62e9, 1.54e9), ("3b+3b", 3.09e9, 3.09e9)])
def test_gpu_script_builds_qwen25_shapes_and_their_bandwidth_bound(pair, g_params, r_params):
    script = gpu_script()
    g_cfg, r_cfg = script.pair_configs(pair)
    assert g_cfg.vocab_size == r_cfg.vocab_size  # one vocabulary per pair
    with torch.device("meta"):
        model = random_pair(g_cfg, r_cfg, lam=0.5, device="meta", dtype=torch.bfloat16)
    for m, expected in ((model.generator, g_params), (model.reasoner, r_params)):
        assert sum(p.numel() for p in m.parameters()) == pytest.approx(expected, rel=0.01)
    g_bytes = script.streamed_bytes(model.generator, lm_head=True)
    r_bytes = script.streamed_bytes(model.reasoner, lm_head=False)
    assert r_bytes < 2 * r_params and g_bytes < 2 * g_params  # bf16, and the embedding lookup is not a read
    one, two = script.bound_ms(model, 1e12, False), script.bound_ms(model, 1e12, True)
    assert one == pytest.approx(1000 * (g_bytes + r_bytes) / 1e12) and two == pytest.approx(
        1000 * max(g_bytes, r_bytes) / 1e12
    )


def test_gpu_script_fails_clearly_without_cuda():
    script = gpu_script()
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        script.main(["--pairs", "3b+3b"])
    with pytest.raises(SystemExit, match="unknown pair"):
        script.pair_configs("7b+70b")


def test_reasoner_alone_runs_the_prefill_and_one_step_per_later_token():
    from tiny_models import left_padded_batch, tiny_pair

    from flythinker.apps.bench.decode_runs import reasoner_alone

    model = tiny_pair()
    calls = []
    model.reasoner.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    ids, mask = left_padded_batch([5, 3], seed=0)
    reasoner_alone(model, ids, mask, new=4)
    assert calls == [(2, 5)] + [(2, 1)] * 3


def test_a_local_model_pair_with_all_cores_generate_and_the_bandwidth_bound(tmp_path, sample_tokenizer):
    from tiny_models import tiny_llama

    from flythinker.cli import main

    folder = tmp_path / "lm"
    tiny_llama(vocab=len(sample_tokenizer)).save_pretrained(folder)
    sample_tokenizer.save_pretrained(folder)
    out = tmp_path / "bench.json"
    main(
        [
            "bench",
            "decode",
            "--generator",
            str(folder),
            "--json",
            str(out),
            "--backends",
            "threads",
            "--repeats",
            "1",
            "--new",
            "4",
            "--prompt",
            "8",
            "--think-tokens",
            "2",
            "--threads-per-model",
            "1",
        ]
    )
    result = json.loads(out.read_text())
    from flythinker.apps.bench.machine import all_threads

    keys = {"generator", "reasoner", "sequential", "concurrent", "hf_generate"}
    keys |= {"hf_generate_all_cores"} if all_threads() > 1 else set()  # (one core: all cores = one thread)
    assert keys <= set(result["ms_per_token"])
    assert all(result["tokens_equal"].values())
    bw = result["bandwidth"]
    assert bw["one_thread_gb_s"] > 0 and bw["all_threads_gb_s"] > 0
    wb = result["weight_bytes"]
    emb = len(sample_tokenizer) * 32 * 4  # the tied table, fp32
    assert wb["generator"] - wb["reasoner"] == emb  # R skips the table G's LM head reads
    assert result["bandwidth_bound_ms"] == pytest.approx(
        1000 * (wb["generator"] + wb["reasoner"]) / (bw["all_threads_gb_s"] * 1e9)
    )


def test_bench_serve_compares_batched_and_one_at_a_time_serving(saved_tiny_model, tmp_path):
    from flythinker.cli import main

    out = tmp_path / "serve.json"
    main(
        [
            "bench",
            "serve",
            "--model",
            str(saved_tiny_model),
            "--concurrency",
            "1,3",
            "--per-client",
            "1",
            "--max-tokens",
            "4",
            "--json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    for n in ("1", "3"):
        for name in ("batched", "one_at_a_time"):
            r = result["levels"][n][name]
            assert r["errors"] == 0 and r["requests"] == int(n) and r["tokens_per_s"] > 0
            assert r["p95_latency_s"] >= r["p50_latency_s"] > 0
        assert result["levels"][n]["speedup"] > 0
