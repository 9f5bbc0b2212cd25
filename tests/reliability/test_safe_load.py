"""Loading runs no foreign code and never reaches the network.

safetensors only (a pickle file is refused, never unpickled), ``auto_map`` custom code only with
the user's flag, hub ids are a clear error with no connection attempted, and the CLI runs offline.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import pytest
from tiny_models import tiny_causal_lm

from flythinker.errors import UserError

SRC = Path(__file__).resolve().parents[2] / "src" / "flythinker"


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection attempt is recorded and fails."""
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError(f"test: network access attempted to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


def _plain_lm_folder(tmp_path: Path, pickle: bool = False) -> Path:
    folder = tmp_path / "lm"
    model = tiny_causal_lm()
    model.save_pretrained(folder)
    if pickle:
        import torch

        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


def test_pickle_only_folders_are_refused_without_being_unpickled(tmp_path, monkeypatch, saved_tiny_model):
    import torch

    from flythinker import FlyThinker
    from flythinker.auto import load_model as load_for_inference
    from flythinker.train.assemble import load_causal_lm
    from flythinker.train.config import ModelSpec

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called on a pickle file")

    folder = _plain_lm_folder(tmp_path, pickle=True)
    model = Path(shutil.copytree(saved_tiny_model, tmp_path / "fly"))
    st = model / "reasoner" / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(st), model / "reasoner" / "pytorch_model.bin")
    st.unlink()
    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(UserError, match=r"pytorch_model\.bin.*safetensors only"):
        load_for_inference(folder)
    with pytest.raises(UserError, match=r"model\.generator\.path: .*pickle weights only"):
        load_causal_lm(ModelSpec(path=str(folder)), "model.generator")
    with pytest.raises(UserError, match=r"reasoner: .*pytorch_model\.bin"):
        FlyThinker.from_pretrained(model)


def test_custom_code_needs_the_flag(tmp_path):
    from flythinker.auto import load_model as load_for_inference
    from flythinker.safe_load import check_model_folder

    folder = _plain_lm_folder(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(UserError, match=r"auto_map.*--trust-remote-code"):
        load_for_inference(folder)
    assert not marker.exists()
    assert check_model_folder(folder, "--model", trust_remote_code=True) == folder  # the flag lets it through
    # a tokenizer folder that names custom code is refused the same way
    tok_cfg = folder / "tokenizer_config.json"
    tok_cfg.write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tok_evil.T", None]}}))
    cfg.pop("auto_map")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"tokenizer_config\.json names custom model code"):
        load_for_inference(folder)


@pytest.mark.parametrize("hub_id", ["Qwen/Qwen2.5-3B", "meta-llama/Llama-3.1-8B-Instruct"])
def test_a_hub_id_is_a_clear_error_and_no_connection_is_attempted(hub_id, no_network, tmp_path, capsys):
    from flythinker import FlyThinker
    from flythinker.auto import load_model as load_for_inference
    from flythinker.cli import main
    from flythinker.train.config import TrainConfig, check_paths
    from flythinker.train.config import from_dict as build

    for load in (FlyThinker.from_pretrained, load_for_inference):
        with pytest.raises(
            UserError,
            match=f"{re.escape(hub_id)}: no such local folder; it looks like a Hugging Face hub id.*local folders only",
        ):
            load(hub_id)
    cfg = build(
        TrainConfig,
        {"model": {"generator": {"path": hub_id}, "reasoner": {"path": hub_id}}, "data": {"path": str(tmp_path)}},
    )
    with pytest.raises(UserError, match=r"model\.generator\.path: .*hub id"):
        check_paths(cfg)
    (tmp_path / "d.json").write_text(json.dumps([{"id": "a", "input": "q", "output": "o", "profile": []}]))
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", hub_id, "--data", str(tmp_path / "d.json"), "--out", str(tmp_path / "p.jsonl")])
    assert exc.value.code == 2 and "hub id" in capsys.readouterr().err
    assert no_network == []


def test_a_saved_model_loads_with_the_network_cut(no_network, saved_tiny_model):
    from flythinker.auto import load_model as load_for_inference

    model, tok = load_for_inference(saved_tiny_model)
    assert tok is not None and model.lam == 0.5
    assert no_network == []


def test_the_cli_runs_offline_unless_the_user_says_otherwise(monkeypatch):
    from flythinker.cli import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")  # the user's own choice is kept
    try:
        main(["--help"])
    except SystemExit:
        pass
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_every_loader_in_the_source_is_local_and_safe():
    """A grep over src/: torch.load only with weights_only=True, every model from_pretrained with
    use_safetensors=True (directly or via its kwargs dict), trust_remote_code never hard-coded True."""
    offenders = []
    for file in SRC.rglob("*.py"):
        text = file.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{file.name}: torch.load({m.group(1)})")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{file.name}: trust_remote_code=True")
        for m in re.finditer(r"AutoModel\w*\.from_pretrained\(([^)]*)\)", text):
            window = text[max(0, m.start() - 600) : m.end()]
            if "use_safetensors=True" not in window:
                offenders.append(f"{file.name}: {m.group(0)}")
        for m in re.finditer(r"Tokenizer\w*\.from_pretrained\(", text):
            call = text[m.start() : text.index("\n", m.end())]
            if "local_files_only=True" not in call:
                offenders.append(f"{file.name}: {call}")
    assert offenders == []
