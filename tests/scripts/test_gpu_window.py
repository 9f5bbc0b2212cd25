"""scripts/gpu_window.py, the GPU queue's runner, at toy size on the CPU (--allow-cpu): the budget
cut-off, records written as tasks end, resuming a window where the last one stopped, the keys."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile

import pytest
from tiny_models import ROOT

SCRIPT = ROOT / "scripts" / "gpu_window.py"


@pytest.fixture(scope="module")
def gw():
    spec = importlib.util.spec_from_file_location("gpu_window", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def window(tmp_path, *args):
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--allow-cpu",
        "--queue",
        str(tmp_path / "queue.yaml"),
        "--records",
        str(tmp_path / "records"),
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(tmp_path / "work"),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


TOY = """tasks:
  - {name: first, run: "echo hello > {out}/hello.txt", estimate_s: 1, once: ever}
  - {name: too_long, run: "echo never", estimate_s: 1000, once: ever}
  - {name: fails, run: "echo broken; exit 3", estimate_s: 1, once: ever}
  - {name: cut_off, run: "sleep 60", estimate_s: 2, once: per_commit}
  - {name: after, run: "echo late", estimate_s: 1, once: ever}
"""


def test_a_window_runs_what_fits_records_each_task_and_stops_at_its_budget(tmp_path):
    (tmp_path / "queue.yaml").write_text(TOY)
    done = window(tmp_path, "--budget", "8")
    assert done.returncode == 0, done.stderr
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "work" / "records").glob("*.json")}
    assert set(records) == {"first", "fails", "cut_off"}  # too_long never started; nothing was left for after
    assert records["first"]["result"] == "ok" and records["first"]["card"] == "cpu"
    assert (
        records["first"]["commit"]
        == subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    )
    assert records["first"]["torch"] and records["first"]["seconds"] < 5
    assert (records["fails"]["result"], records["fails"]["rc"]) == ("failed", 3)
    assert records["cut_off"]["result"] == "timeout" and records["cut_off"]["seconds"] < 9
    assert "estimate 1000 s" in done.stdout and "after" in done.stdout
    with tarfile.open(tmp_path / "out" / "window.tgz") as tar:  # one file comes back: everything in it
        names = tar.getnames()
    assert "./first/hello.txt" in names and "./records/first.json" in names and "./summary.txt" in names


def test_the_next_window_resumes_where_the_last_stopped(tmp_path):
    (tmp_path / "queue.yaml").write_text(TOY)
    assert window(tmp_path, "--budget", "8").returncode == 0
    filed = subprocess.run(
        [sys.executable, str(SCRIPT), "--collect", str(tmp_path / "out"), "--records", str(tmp_path / "records")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert filed.returncode == 0, filed.stderr
    assert len(list((tmp_path / "records").glob("*_first.json"))) == 1
    assert (tmp_path / "first" / "hello.txt").read_text() == "hello\n"  # the task's output, filed beside
    second = window(tmp_path, "--budget", "8", "--only", "first,fails,after")
    ran = {p.stem for p in (tmp_path / "work" / "records").glob("*.json")}
    assert ran == {"fails", "after"}  # first was done (ever); the failed one is due again
    assert "first" in second.stdout and "done" in second.stdout


def test_keys_follow_the_commits_that_touched_a_tasks_paths(gw):
    head = gw._git("rev-parse", "HEAD")
    task = {"name": "t", "once": "per_change", "paths": ["scripts/gpu_check.py"]}
    assert gw.task_key(task, head) == gw._git("log", "-1", "--format=%H", "--", "scripts/gpu_check.py")
    assert gw.task_key({"once": "per_commit"}, head) == head and gw.task_key({"once": "ever"}, head) == "ever"


def test_without_git_the_keys_come_from_the_packed_plan(gw, tmp_path, monkeypatch):
    tasks = gw.load_queue(gw.QUEUE)
    monkeypatch.setattr(gw, "_git", lambda *a: None)
    monkeypatch.setattr(gw, "PLAN", tmp_path / "plan.json")
    with pytest.raises(gw.QueueError, match="gpu_pack.sh"):
        gw.plan_keys(tasks)
    (tmp_path / "plan.json").write_text(json.dumps({"commit": "abc", "keys": {t["name"]: "k" for t in tasks}}))
    assert gw.plan_keys(tasks)["commit"] == "abc"
    (tmp_path / "plan.json").write_text(json.dumps({"commit": "abc", "keys": {}}))
    with pytest.raises(gw.QueueError, match="another queue"):
        gw.plan_keys(tasks)


@pytest.mark.parametrize(
    "bad,match",
    [
        ("tasks: []", "non-empty list"),
        ("tasks:\n  - {name: a, run: x, estimate_s: 1}\n  - {name: a, run: y, estimate_s: 1}", "used twice"),
        ("tasks:\n  - {name: a, run: x, estimate_s: 0}", "estimate_s"),
        ("tasks:\n  - {name: a, run: x, estimate_s: 1, once: sometimes}", "once"),
        ("tasks:\n  - {name: a, run: x, estimate_s: 1, once: per_change}", "paths"),
        ("tasks:\n  - {name: a, run: x, estimate_s: 1, needs: [gpu]}", "unknown needs"),
    ],
)
def test_a_bad_queue_is_refused_with_where_and_why(gw, tmp_path, bad, match):
    (tmp_path / "q.yaml").write_text(bad)
    with pytest.raises(gw.QueueError, match=match):
        gw.load_queue(tmp_path / "q.yaml")


def test_the_committed_queue_names_what_exists(gw):
    """Every task of results/gpu/queue.yaml runs a script that exists, and every large cell a row of
    the large protocol, in the science issue's order (the paper-recipe pair first)."""
    import yaml

    tasks = gw.load_queue(gw.QUEUE)
    large = yaml.safe_load((ROOT / "src/flythinker/configs/experiment_gitcommits_large.yaml").read_text())
    rows = {r["name"] for r in large["ablations"]} | set(large["methods"])
    cells = []
    for t in tasks:
        for word in t["run"].split():
            if word.startswith("scripts/"):
                assert (ROOT / word).is_file(), (t["name"], word)
        if "experiment_gitcommits_large.yaml" in t["run"]:
            row = t["run"].split("--only ")[1].split()[0]
            assert row in rows, (t["name"], row)
            cells.append(row)
    assert cells[:3] == ["sft_paper", "flythinker_paper", "flythinker_paper_gate"]
    assert gw.main(["--plan"]) == 0
