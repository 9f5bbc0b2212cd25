"""``flythinker export vllm``: the trained tensors bit for bit under G's and R's prefixes, ρ as the
model computes it, and clear refusals (runs without vLLM; tests/vllm_engine serves the folder)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_causal_lm

from flythinker import FlyThinker
from flythinker.cli import main


def test_the_export_holds_both_models_and_the_fusion_as_trained(tmp_path, saved_tiny_model, capsys):
    main(["export", "vllm", str(saved_tiny_model), str(tmp_path / "out")])
    assert "fusion prefix" in capsys.readouterr().out
    model = FlyThinker.from_pretrained(saved_tiny_model)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architectures"] == ["FlyThinkerForCausalLM"] and cfg["model_type"] == "flythinker"
    assert cfg["rho"] == pytest.approx(model.rho().item(), rel=1e-7) and cfg["lam"] == 0.5
    assert cfg["text_config"]["hidden_size"] == 48 and cfg["reasoner_config"]["hidden_size"] == 32
    for part in ("generator", "reasoner"):
        exported = load_file(tmp_path / "out" / f"{part}-00001.safetensors")
        original = load_file(saved_tiny_model / part / "model.safetensors")
        assert set(exported) == {f"{part}.{k}" for k in original}
        assert all(torch.equal(exported[f"{part}.{k}"], v) for k, v in original.items())
    assert (tmp_path / "out" / "tokenizer.json").exists()

    from transformers import AutoConfig

    from flythinker.apps.vllm.config import FlyThinkerVllmConfig, register_config

    register_config()
    read = AutoConfig.from_pretrained(tmp_path / "out")
    assert isinstance(read, FlyThinkerVllmConfig) and read.get_text_config().num_attention_heads > 0


def test_refusals_are_one_line(tmp_path, saved_tiny_model, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    for argv, says in (
        ([str(saved_tiny_model), str(tmp_path / "taken")], "already exists"),
        ([str(saved_tiny_model / "generator"), str(tmp_path / "o1")], "not a FlyThinker folder"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["export", "vllm", *argv])
        assert e.value.code == 2 and says in capsys.readouterr().err
    assert (tmp_path / "taken" / "x").read_text() == "keep me"


def test_a_variant_vllm_cannot_run_is_refused(tmp_path, capsys):
    from flythinker.static import StaticThinker

    StaticThinker(tiny_causal_lm(hidden=48, seed=0), tiny_causal_lm(hidden=32, seed=1), lam=0.5).save_pretrained(
        tmp_path / "static"
    )
    with pytest.raises(SystemExit):
        main(["export", "vllm", str(tmp_path / "static"), str(tmp_path / "out")])
    assert "'static' variant cannot run on vLLM" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_serve_exports_once_per_version_of_the_folder(tmp_path, saved_tiny_model):
    from flythinker.apps.vllm.serve import exported_folder, is_exported

    first = exported_folder(saved_tiny_model, cache=tmp_path / "cache")
    assert is_exported(first) and exported_folder(first) == first  # an exported folder is served as it is
    stamp = (first / "config.json").stat().st_mtime_ns
    assert exported_folder(saved_tiny_model, cache=tmp_path / "cache") == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # not written again


def test_vllm_args_are_read_as_yaml_and_refused_when_malformed():
    from flythinker.apps.serve.command import _engine_args
    from flythinker.errors import UserError

    assert _engine_args(["max_model_len=4096", "enforce-eager=true", "x=1.5"]) == {
        "max_model_len": 4096,
        "enforce_eager": True,
        "x": 1.5,
    }
    with pytest.raises(UserError, match="KEY=VALUE"):
        _engine_args(["max_model_len"])


def test_serve_with_the_vllm_engine_says_what_to_install(saved_tiny_model, capsys):
    pytest.importorskip("fastapi")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(SystemExit):
        main(["serve", str(saved_tiny_model), "--engine", "vllm"])
    assert "pip install 'flythinker[vllm]'" in capsys.readouterr().err
