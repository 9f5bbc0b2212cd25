"""Bad input → one clear line on stderr, exit code 2, no traceback, nothing overwritten.

Each CLI case builds a malformed input in its own folder, runs ``flythinker.cli.main`` in-process
and checks: SystemExit(2), exactly one ``error:`` line (the last line of stderr) that names what
is wrong and where, and every file under the case folder and the shared world (data, model)
byte-identical afterwards. API cases check the public functions raise :class:`UserError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import tiny_causal_lm

from flythinker.cli import main
from flythinker.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _row(i: int, **over) -> dict:
    row = {
        "id": f"ex-{i}",
        "user_id": f"u{i % 2}",
        "input": f"Write commit message {i}.",
        "output": f"Fix the parser bug number {i} in the reader.",
        "profile": [
            {"title": "Old fix", "text": "Handle empty lines in the reader."},
            {"title": "Docs", "text": "Explain the reader options."},
        ],
    }
    row.update(over)
    return {k: v for k, v in row.items() if v is not _DROP}


_DROP = object()


def _rows(n: int = 4, bad: int | None = None, **over) -> list[dict]:
    return [_row(i, **(over if i == bad else {})) for i in range(n)]


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(obj if isinstance(obj, bytes) else json.dumps(obj).encode())
    return path


def _snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class World:
    """Valid inputs shared by every case: a dataset folder, predictions for it, a saved model."""

    def __init__(self, root: Path, model: Path):
        self.root, self.model = root, model
        self.data = root / "data"
        for split in ("train", "dev", "test"):
            _write(self.data / f"{split}.json", _rows())
        self.refs = self.data / "test.json"
        self.preds = root / "preds.jsonl"
        self.preds.write_text(
            "".join(json.dumps({"id": f"ex-{i}", "prediction": "Fix the bug."}) + "\n" for i in range(4))
        )
        self.config = root / "tiny.yaml"
        import yaml

        self.config.write_text(
            yaml.safe_dump(
                {
                    "model": {
                        "mode": "flythinker",
                        "generator": {"tiny": {"hidden_size": 32}},
                        "reasoner": {"tiny": {"hidden_size": 32}},
                    },
                    "data": {"path": str(self.data)},
                    "train": {"max_steps": 1},
                }
            )
        )

    def evaluate(self, preds=None, refs=None, out=None) -> list[str]:
        return [
            "evaluate",
            "--predictions",
            str(preds or self.preds),
            "--references",
            str(refs or self.refs),
            "--out",
            str(out or self.root / "no-such-eval"),
            "--no-bertscore",
            "--bootstrap",
            "0",
        ]

    def generate(self, t: Path, model=None, data=None, out=None, *extra) -> list[str]:
        return [
            "generate",
            "--model",
            str(model or self.model),
            "--data",
            str(data or self.data),
            "--out",
            str(out or t / "preds.jsonl"),
            "--greedy",
            "--max-new-tokens",
            "2",
            *extra,
        ]

    def model_copy(self, t: Path) -> Path:
        return Path(shutil.copytree(self.model, t / "model"))

    RUN_ARGS = ("train.save_every=1", "train.eval=false", "train.max_steps=2")

    def run_copy(self, t: Path) -> Path:
        """A copy of a finished 2-step run with a checkpoint per step (trained once per module)."""
        run = self.root / "trained"
        if not run.is_dir():
            from flythinker.train.config import load_config
            from flythinker.train.trainer import train

            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("FLYTHINKER_CACHE", str(self.root.parent / "cache"))
                train(load_config(self.config, self.RUN_ARGS), run)
        return Path(shutil.copytree(run, t / "run"))


@pytest.fixture(scope="module")
def world(tmp_path_factory, saved_tiny_model) -> World:
    return World(tmp_path_factory.mktemp("world"), saved_tiny_model)


# --- the table: name -> (build(t, world) -> argv, substrings the error line must hold) -------------

CLI_CASES: dict = {}


def case(name: str, *expect: str):
    def register(fn):
        CLI_CASES[name] = (fn, expect)
        return fn

    return register


def _data_case(name, rows_or_bytes, *expect, suffix=".json"):
    @case(name, *expect)
    def build(t, w):
        return w.evaluate(refs=_write(t / f"refs{suffix}", rows_or_bytes))


_data_case("row missing output", _rows(bad=2, output=_DROP), "refs.json", "row 2", "'output'", "missing")
_data_case("row missing input", _rows(bad=1, input=_DROP), "row 1", "'input'", "missing")
_data_case("row missing profile", _rows(bad=3, profile=_DROP), "row 3", "'profile'", "missing")
_data_case("output mistyped (int)", _rows(bad=0, output=42), "row 0", "'output'", "expected a string, got int")
_data_case("input mistyped (list)", _rows(bad=1, input=["a"]), "row 1", "'input'", "expected a string, got list")
_data_case("empty output", _rows(bad=2, output="   "), "row 2", "'output'", "is empty")
_data_case("empty input", _rows(bad=0, input=""), "row 0", "'input'", "is empty")
_data_case("profile not a list", _rows(bad=1, profile="my history"), "row 1", "'profile'", "expected a list")
_data_case("profile item not an object", _rows(bad=2, profile=["text"]), "row 2", "profile[0]", "expected an object")
_data_case(
    "profile item without its text", _rows(bad=2, profile=[{"title": "x"}]), "row 2", "profile[0].text", "missing"
)
_data_case("row is not an object", [_row(0), "just a string"], "row 1", "expected an object, got str")
_data_case("id mistyped (list)", _rows(bad=1, id=[1, 2]), "row 1", "'id'", "expected a string or integer")
_data_case("user_id mistyped (object)", _rows(bad=1, user_id={"a": 1}), "row 1", "'user_id'", "expected a string")
_data_case("repeated id", _rows(bad=3, id="ex-0"), "row 3", "'id'", "repeats the id of row 0")
_data_case("invalid JSON list", json.dumps(_rows())[:-40].encode() + b"}}]", "refs.json", "invalid JSON")
_data_case("data after the list", json.dumps(_rows()).encode() + b" [1]", "invalid JSON", "data after the list")
_data_case(
    "invalid JSONL line",
    b"\n".join(json.dumps(r).encode() for r in _rows())[:-5] + b"\n{oops}\n",
    "refs.jsonl",
    "invalid JSON on line",
    suffix=".jsonl",
)
_data_case(
    "non-UTF-8 byte in output",
    json.dumps(_rows()).encode().replace(b"parser bug number 2", b"parser \xff\xfe 2"),
    "row 2",
    "'output'",
    "not valid UTF-8",
    "0xff",
)
_data_case("empty data file", b"", "refs.json", "expected a JSON list")
_data_case("JSON object instead of rows", b'{"data": 1}', "refs.json", "row 0", "'input'", "missing")
_data_case("unsupported data file type", b"id,input\n", "refs.csv", "unsupported file type", suffix=".csv")


@case("references do not exist", "no-such.json", "no such file")
def _(t, w):
    return w.evaluate(refs=t / "no-such.json")


@case("predictions ids do not match the references", "not in", "without a prediction")
def _(t, w):
    p = t / "p.jsonl"
    p.write_text("".join(json.dumps({"id": f"other-{i}", "prediction": "x"}) + "\n" for i in range(4)))
    return w.evaluate(preds=p)


@case("predictions miss one reference", "1 reference(s)", "'ex-3'")
def _(t, w):
    p = t / "p.jsonl"
    p.write_text("".join(json.dumps({"id": f"ex-{i}", "prediction": "x"}) + "\n" for i in range(3)))
    return w.evaluate(preds=p)


@case("predictions line is not JSON", "p.jsonl", "line 2", "not JSON")
def _(t, w):
    p = t / "p.jsonl"
    p.write_text(json.dumps({"id": "ex-0", "prediction": "x"}) + "\n{nope\n")
    return w.evaluate(preds=p)


@case("predictions line without prediction", "line 1", "'prediction'")
def _(t, w):
    p = t / "p.jsonl"
    p.write_text(json.dumps({"id": "ex-0", "text": "x"}) + "\n")
    return w.evaluate(preds=p)


@case("predictions repeat an id", "'ex-1' appears twice")
def _(t, w):
    p = t / "p.jsonl"
    p.write_text("".join(json.dumps({"id": f"ex-{i}", "prediction": "x"}) + "\n" for i in (0, 1, 1, 2, 3)))
    return w.evaluate(preds=p)


@case("predictions file empty", "p.jsonl", "no predictions")
def _(t, w):
    (t / "p.jsonl").write_text("")
    return w.evaluate(preds=t / "p.jsonl")


@case("predictions not UTF-8", "p.jsonl", "line 2", "not valid UTF-8")
def _(t, w):
    p = t / "p.jsonl"
    p.write_bytes(b'{"id": "ex-0", "prediction": "x"}\n{"id": "ex-1", "prediction": "\xff"}\n')
    return w.evaluate(preds=p)


@case("evaluate --out already holds metrics", "metrics.json exists", "--overwrite")
def _(t, w):
    _write(t / "eval" / "metrics.json", {"old": 1})
    return w.evaluate(out=t / "eval")


@case("evaluate --out is a file", "is a file")
def _(t, w):
    (t / "eval").write_text("not a folder")
    return w.evaluate(out=t / "eval")


@case("evaluate --bertscore-model with pickle weights", "--bertscore-model", "pytorch_model.bin", "safetensors only")
def _(t, w):
    folder = t / "scorer"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # a pickle: never opened
    argv = w.evaluate()
    argv.remove("--no-bertscore")
    return argv + ["--bertscore-model", str(folder)]


@case("evaluate negative bootstrap", "--bootstrap -1")
def _(t, w):
    return w.evaluate()[:-1] + ["-1"]


# --- configs (flythinker train) --------------------------------------------------------------------


def _train_case(name, overrides, *expect):
    @case(name, *expect)
    def build(t, w):
        return ["train", str(w.config), *overrides, "--out", str(t / "run")]


_train_case("config unknown key", ["train.lrr=0.1"], "tiny.yaml", "train.lrr", "unknown key", "did you mean 'lr'")
_train_case("config negative learning rate", ["train.lr=-1e-3"], "train.lr", "must be a finite number > 0")
_train_case("config NaN learning rate", ["train.lr=.nan"], "train.lr", "nan")
_train_case("config negative lambda", ["model.lam=-0.5"], "model.lam", ">= 0", "-0.5")
_train_case("config NaN lambda", ["model.lam=.nan"], "model.lam", "nan")
_train_case("config infinite lambda", ["model.lam=.inf"], "model.lam", "inf")
_train_case("config mistyped value", ["train.batch_size=two"], "train.batch_size", "must be a number")
_train_case("config zero batch size", ["train.batch_size=0"], "train.batch_size", ">= 1")
_train_case("config unknown choice", ["model.fusion=concat"], "model.fusion", "must be one of")
_train_case("override without =", ["train.lr"], "override 'train.lr'", "KEY=VALUE")
_train_case(
    "reasoner path does not exist",
    ["model.reasoner={path: /no/such/reasoner}"],
    "model.reasoner.path",
    "/no/such/reasoner",
    "does not exist",
)
_train_case(
    "generator path is a hub id",
    ["model.generator={path: Qwen/Qwen2.5-3B}", "model.tokenizer=train"],
    "model.generator.path",
    "Qwen/Qwen2.5-3B",
    "hub id",
    "local folders only",
)
_train_case("data path does not exist", ["data.path=/no/such/data"], "data.path", "/no/such/data", "does not exist")


@case("config file missing", "nope.yaml", "no such config file")
def _(t, w):
    return ["train", str(t / "nope.yaml"), "--out", str(t / "run")]


@case("config not YAML", "bad.yaml", "not valid YAML at line 2")
def _(t, w):
    (t / "bad.yaml").write_text("model: {mode: [flythinker\n")
    return ["train", str(t / "bad.yaml"), "--out", str(t / "run")]


@case("config not a mapping", "list.yaml", "expected a mapping")
def _(t, w):
    (t / "list.yaml").write_text("- model\n- data\n")
    return ["train", str(t / "list.yaml"), "--out", str(t / "run")]


@case("train --out already holds a run", "already holds a run", "--resume", "--overwrite")
def _(t, w):
    _write(t / "run" / "log.jsonl", b'{"kind": "train", "step": 1, "loss": 3.0}\n')
    _write(t / "run" / "config.yaml", b"model: {}\n")
    return ["train", str(w.config), "--out", str(t / "run")]


@case("train --out is a file", "is a file")
def _(t, w):
    (t / "run").write_text("x")
    return ["train", str(w.config), "--out", str(t / "run")]


def _resume_case(name, mutate, *expect):
    @case(name, *expect)
    def build(t, w):
        run = w.run_copy(t)
        mutate(run / "checkpoints" / "step-00000002")
        return ["train", str(w.config), *w.RUN_ARGS[:2], "train.max_steps=4", "--out", str(run), "--resume"]


_resume_case(
    "resume from a checkpoint with model.safetensors cut in half",
    lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:4000]),
    "checkpoint",
    "step-00000002",
    "damaged",
    "model.safetensors",
    "delete that folder",
)
_resume_case(
    "resume from a checkpoint with a truncated optimizer file",
    lambda c: (c / "optimizer.bin").write_bytes((c / "optimizer.bin").read_bytes()[:300]),
    "step-00000002",
    "damaged",
)
_resume_case(
    "resume from a checkpoint with garbage trainer_state.json",
    lambda c: (c / "trainer_state.json").write_text('{"step": 2, '),
    "step-00000002",
    "damaged",
    "trainer_state.json",
)


@case("generator and reasoner with different vocabularies (train)", "model.reasoner.path", "tokenizers differ")
def _(t, w):
    from flythinker.data.tokenizer import train_tokenizer

    other = w.model_copy(t) / "reasoner"
    tok = train_tokenizer(["completely different words here"] * 8, vocab_size=300, cache_dir=t / "tok")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (other / f).unlink(missing_ok=True)
    tok.save_pretrained(other)
    return [
        "train",
        str(w.config),
        f"model.generator={{path: {w.model / 'generator'}}}",
        f"model.reasoner={{path: {other}}}",
        "--out",
        str(t / "run"),
    ]


# --- model folders (flythinker generate) -----------------------------------------------------------


def _model_case(name, mutate, *expect):
    @case(name, *expect)
    def build(t, w):
        m = w.model_copy(t)
        mutate(m, t)
        return w.generate(t, model=m)


def _cut_half(m, t):
    f = m / "generator" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _scramble_header(m, t):
    f = m / "reasoner" / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[8:72] = os.urandom(64)
    f.write_bytes(bytes(b))


def _pickle_only(m, t):
    import torch
    from safetensors.torch import load_file

    f = m / "generator" / "model.safetensors"
    torch.save(load_file(f), m / "generator" / "pytorch_model.bin")
    f.unlink()


def _auto_map(m, t):
    f = m / "generator" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    f.write_text(json.dumps(cfg))
    (m / "generator" / "modeling_evil.py").write_text(f"open({str(t / 'PWNED')!r}, 'w').write('ran')\n")


def _other_vocab_reasoner(m, t):
    shutil.rmtree(m / "reasoner")
    tiny_causal_lm(hidden=32, vocab=97, seed=3).save_pretrained(m / "reasoner")


_model_case("model.safetensors cut in half", _cut_half, "generator/model.safetensors", "is damaged")
_model_case("model.safetensors header corrupted", _scramble_header, "reasoner/model.safetensors", "is damaged")
_model_case(
    "model.safetensors missing",
    lambda m, t: (m / "generator" / "model.safetensors").unlink(),
    "generator",
    "model.safetensors",
)
_model_case("pickle weights instead of safetensors", _pickle_only, "pytorch_model.bin", "safetensors only")
_model_case("config with auto_map (custom code)", _auto_map, "auto_map", "--trust-remote-code")
_model_case(
    "flythinker.json garbage",
    lambda m, t: (m / "flythinker.json").write_text("{lam: 0.5"),
    "flythinker.json",
    "unreadable FlyThinker config",
)
_model_case(
    "flythinker.json without lam",
    lambda m, t: (m / "flythinker.json").write_text('{"fusion": "prefix"}'),
    "flythinker.json",
    "'lam'",
)
_model_case(
    "flythinker.json unknown variant",
    lambda m, t: (m / "flythinker.json").write_text('{"lam": 0.5, "fusion": "prefix", "variant": "magic"}'),
    "flythinker.json",
    "unknown FlyThinker variant",
)
_model_case(
    "flythinker.json negative lambda",
    lambda m, t: (m / "flythinker.json").write_text('{"lam": -2, "fusion": "prefix"}'),
    "lam",
    "-2",
)
_model_case(
    "generator config.json garbage",
    lambda m, t: (m / "generator" / "config.json").write_text("{x"),
    "config.json",
    "not valid JSON",
)
_model_case(
    "tokenizer.json truncated",
    lambda m, t: (m / "generator" / "tokenizer.json").write_text(
        (m / "generator" / "tokenizer.json").read_text()[:500]
    ),
    "generator",
    "cannot load the tokenizer",
)
_model_case("reasoner folder missing", lambda m, t: shutil.rmtree(m / "reasoner"), "missing reasoner/ folder")
_model_case("generator and reasoner with different vocabularies", _other_vocab_reasoner, "vocabulary sizes differ")
_model_case(
    "empty model folder",
    lambda m, t: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in m.iterdir()],
    "neither a FlyThinker folder",
)


@case("model path is a hub id", "Qwen/Qwen2.5-3B", "hub id", "local folders only")
def _(t, w):
    return w.generate(t, model="Qwen/Qwen2.5-3B")


@case("model path does not exist", "no-such-model", "does not exist")
def _(t, w):
    return w.generate(t, model=t / "no-such-model")


@case("generate --out holds another dataset's predictions", "preds.jsonl", "ids not among", "another --out")
def _(t, w):
    (t / "preds.jsonl").write_text(json.dumps({"id": "other-7", "user_id": "u", "prediction": "x"}) + "\n")
    return w.generate(t)


@case("generate --out holds a file that is not predictions", "preds.jsonl", "line 1", "not a predictions record")
def _(t, w):
    (t / "preds.jsonl").write_text("id,prediction\nex-0,hello")  # no final newline: must not be cut
    return w.generate(t)


@case("generate --out holds binary junk", "preds.jsonl", "not valid UTF-8")
def _(t, w):
    (t / "preds.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    return w.generate(t)


@case("generate --out is a folder", "not a file")
def _(t, w):
    (t / "preds.jsonl").mkdir()
    (t / "preds.jsonl" / "keep.txt").write_text("keep")
    return w.generate(t)


@case("generate split with no file", "split 'holdout'")
def _(t, w):
    return w.generate(t, None, None, None, "--split", "holdout")


@case("generate empty split", "no examples")
def _(t, w):
    _write(t / "data" / "test.json", [])
    return w.generate(t, data=t / "data")


@case("generate zero batch size", "batch_size must be ≥ 1")
def _(t, w):
    return w.generate(t, None, None, None, "--batch-size", "0")


@case("generate unknown retrieval", "--retrieval", "is not one of")
def _(t, w):
    return w.generate(t, None, None, None, "--retrieval", "magic")


@case("generate negative limit", "limit must be >= 0")
def _(t, w):
    return w.generate(t, None, None, None, "--limit", "-1")


@case("demo --out already holds a run", "already holds a run", "--overwrite")
def _(t, w):
    _write(t / "demo" / "metrics.json", {"old": 1})
    return ["demo", "--out", str(t / "demo")]


@case("demo --data is not a folder", "--data", "not a folder")
def _(t, w):
    return ["demo", "--out", str(t / "demo"), "--data", str(w.refs)]


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_bad_input_is_one_line_exit_2_and_touches_nothing(name, world, tmp_path, capsys):
    build, expect = CLI_CASES[name]
    argv = build(tmp_path, world)
    capsys.readouterr()
    before = _snapshot(tmp_path, world.root, world.model)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    for text in expect:
        assert text in lines[-1], f"{text!r} not in {lines[-1]!r}"
    assert _snapshot(tmp_path, world.root, world.model) == before, "an existing file changed"
    assert not (tmp_path / "PWNED").exists(), "custom model code was run"


def test_the_table_has_enough_cases():
    assert len(CLI_CASES) + len(API_CASES) >= 40


def test_debug_shows_the_traceback(world, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        main(["--debug", *world.generate(tmp_path, model=tmp_path / "missing")])
    os.environ.pop("FLYTHINKER_DEBUG", None)


SUBPROCESS_CASES = [
    "row missing output",
    "config NaN lambda",
    "model.safetensors cut in half",
    "model path is a hub id",
    "generate --out holds another dataset's predictions",
]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_real_exit_code_and_no_traceback(name, world, tmp_path):
    build, expect = CLI_CASES[name]
    argv = build(tmp_path, world)
    before = _snapshot(tmp_path, world.root, world.model)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "flythinker.cli", *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(text in last for text in expect), last
    assert _snapshot(tmp_path, world.root, world.model) == before


# --- the public API ------------------------------------------------------------------------------------


def _api_examples(**over):
    def setup(t, w):
        from flythinker.data.longlamp import load_examples

        f = _write(t / "d.json", _rows(bad=1, **over))
        return lambda: load_examples(f)

    return setup


def _api_metrics(preds, refs, **kw):
    from flythinker.evaluate.metrics import compute_metrics

    return lambda t, w: lambda: compute_metrics(preds, refs, bertscore=False, bootstrap=0, **kw)


def _api_pair(vocab_r, lam=0.5):
    def setup(t, w):
        from flythinker import FlyThinker

        g, r = tiny_causal_lm(vocab=97), tiny_causal_lm(vocab=vocab_r, seed=1)
        return lambda: FlyThinker(g, r, lam=lam)

    return setup


def _api_from_pretrained(path_of):
    from flythinker import FlyThinker

    return lambda t, w: lambda: FlyThinker.from_pretrained(path_of(t, w))


def _api_load_examples_missing(t, w):
    from flythinker.data.longlamp import load_examples

    return lambda: load_examples(t / "x")


def _api_train_existing(t, w):
    from flythinker.train.config import load_config
    from flythinker.train.trainer import train

    _write(t / "run" / "result.json", {"old": 1})
    return lambda: train(load_config(w.config), t / "run")


def _api_config(text):
    def setup(t, w):
        from flythinker.train.config import load_config

        (t / "c.yaml").write_text(text)
        return lambda: load_config(t / "c.yaml")

    return setup


def _api_generate_foreign(t, w):
    from flythinker.apps.generate import DecodeSettings, generate_predictions
    from flythinker.auto import load_model as load_for_inference
    from flythinker.data.longlamp import load_examples

    model, tok = load_for_inference(w.model)
    out = t / "p.jsonl"
    out.write_text(json.dumps({"id": "elsewhere-1", "prediction": "x"}) + "\n")
    return lambda: generate_predictions(
        model, tok, load_examples(w.refs), out, settings=DecodeSettings(max_new_tokens=1), progress=False
    )


API_CASES = {  # name -> (setup(t, world) -> the failing call, pattern of the UserError)
    "load_examples: missing output": (_api_examples(output=_DROP), r"d\.json: row 1 .*'output': missing"),
    "load_examples: empty profile item": (_api_examples(profile=[{}]), r"row 1 .*profile\[0\]\.text"),
    "load_examples: missing path": (_api_load_examples_missing, "no such file"),
    "compute_metrics: lengths differ": (_api_metrics(["a b"], ["a", "b"]), "1 predictions but 2 references"),
    "compute_metrics: no predictions": (_api_metrics([], []), "no predictions"),
    "compute_metrics: None prediction": (_api_metrics([None], ["a"]), r"predictions\[0\] is NoneType"),
    "compute_metrics: a string, not a list": (_api_metrics("abc", "abd"), "must be a list of strings"),
    "compute_metrics: user ids length": (_api_metrics(["a"], ["a"], user_ids=["u", "v"]), "2 user ids"),
    "FlyThinker: different vocabularies": (_api_pair(120), "vocabulary sizes differ"),
    "FlyThinker: NaN lambda": (_api_pair(97, lam=float("nan")), "lam"),
    "FlyThinker: negative lambda": (_api_pair(97, lam=-1.0), "lam"),
    "from_pretrained: hub id": (_api_from_pretrained(lambda t, w: "Qwen/Qwen2.5-3B"), "hub id"),
    "from_pretrained: not a FlyThinker folder": (_api_from_pretrained(lambda t, w: w.data), "not a FlyThinker folder"),
    "load_config: unknown key": (
        _api_config("train: {lr: 1.0e-3, epoch: 2}\n"),
        r"c\.yaml: train\.epoch: unknown key .*'epochs'",
    ),
    "load_config: NaN lambda": (_api_config("model: {lam: .nan}\n"), "model.lam"),
    "train: out holds a run": (_api_train_existing, "already holds a run"),
    "generate_predictions: foreign ids in out": (_api_generate_foreign, "ids not among"),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_api_bad_input_raises_user_error(name, world, tmp_path):
    setup, pattern = API_CASES[name]
    call = setup(tmp_path, world)
    before = _snapshot(tmp_path, world.root, world.model)
    with pytest.raises(UserError, match=pattern):
        call()
    assert _snapshot(tmp_path, world.root, world.model) == before


def test_a_100k_token_input_is_truncated_not_a_crash(world, tmp_path):
    from flythinker.apps.generate import DecodeSettings, generate_predictions
    from flythinker.auto import load_model as load_for_inference
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig, encode_for_generation

    words = " ".join(f"w{i % 977}" for i in range(100_000))
    data = _write(tmp_path / "long.json", _rows(2, bad=1, input=words, profile=[{"title": "long", "text": words}]))
    examples = load_examples(data)
    model, tok = load_for_inference(world.model)
    cfg = PromptConfig()
    assert len(tok(words)["input_ids"]) >= 100_000
    n_prompt = len(encode_for_generation(examples[1], tok, cfg))
    assert n_prompt <= cfg.profile_tokens + cfg.query_tokens + 200  # budgets cut the prompt (+ template)
    out = tmp_path / "p.jsonl"
    generate_predictions(
        model, tok, examples, out, settings=DecodeSettings(max_new_tokens=2, do_sample=False), progress=False
    )
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["ex-0", "ex-1"]
