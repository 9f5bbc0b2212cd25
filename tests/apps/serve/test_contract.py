"""The server keeps the contract its OpenAPI document states: a property-based fuzzer
(schemathesis' own command line) reads the document from the running `flythinker serve` and sends
it valid and invalid requests for every route; no answer is a 5xx, every status, header, content
type and body is one the document declares, a wrong method gets 405 with ``Allow``, and the key is
enforced where the document says it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serving import start_server

pytest.importorskip("schemathesis")

KEY = "k"
EXAMPLES = 25  # per route and phase; the tiny model answers even 4,096 tokens within seconds


@pytest.fixture(scope="module")
def server(saved_tiny_model, tmp_path_factory):
    # its log goes nowhere: a pipe nobody reads would fill with the fuzzer's requests and block the server
    proc, port = start_server(saved_tiny_model, tmp_path_factory.mktemp("contract"), key=KEY, stdout=subprocess.DEVNULL)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=60)


@pytest.mark.slow
def test_the_fuzzer_finds_no_5xx_and_no_contract_violation(server, tmp_path):
    """Every check, valid and invalid data, deterministic generation (a fixed seed, no example
    database): the same requests every run, so a failure here is reproducible."""
    here = Path(__file__).parent
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(here / "schemathesis.toml"), "run"]
    cmd += [f"{server}/openapi.json"]
    cmd += ["--header", f"Authorization: Bearer {KEY}", "--checks", "all", "--mode", "all"]
    cmd += ["--max-examples", str(EXAMPLES), "--seed", "0", "--generation-deterministic", "--no-color"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(here / "contract_hooks.py")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    report = proc.stdout + proc.stderr
    failures = report.find("FAILURES")
    assert proc.returncode == 0, report[failures : failures + 12000] if failures >= 0 else report[-6000:]
    assert "Tested: 10" in report and "generated" in report  # every route, and cases were sent


def test_the_document_states_the_errors_and_constraints(server):
    doc = json.load(urllib.request.urlopen(f"{server}/openapi.json", timeout=30))
    ops = doc["paths"]
    completion = ops["/v1/completions"]["post"]
    assert set(completion["responses"]) >= {"200", "400", "401", "404", "413", "422", "503"}
    assert "text/event-stream" in completion["responses"]["200"]["content"]
    assert set(ops["/v1/users/{user_id}/profile"]["get"]["responses"]) >= {"200", "401", "404", "422"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in ops["/health"]["get"]
    prompt = doc["components"]["schemas"]["Completion"]["properties"]["prompt"]["anyOf"]
    assert {"type": "string", "minLength": 1} in prompt  # an empty prompt is refused, and the schema says so
    sampling = doc["components"]["schemas"]["Completion"]["properties"]
    assert sampling["n"]["anyOf"] == [{"enum": [None, 1]}]  # OpenAI's field, at the one value this server takes
    error = completion["responses"]["422"]["content"]["application/json"]["schema"]
    assert error["$ref"].endswith("/ErrorBody") and doc["components"]["schemas"]["ErrorBody"]["required"] == ["error"]


def test_a_wrong_method_gets_405_with_every_allowed_method(server):
    req = urllib.request.Request(
        f"{server}/v1/users/u/profile", method="POST", headers={"Authorization": f"Bearer {KEY}"}
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 405
    assert e.value.headers["Allow"] == "GET, PUT"
    assert json.load(e.value)["error"]["type"] == "invalid_request_error"
