"""`flythinker experiment`: every method runs end to end on tiny data; finished cells are skipped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tiny_models import ROOT

from flythinker.apps.experiment.cells import cell_train_config
from flythinker.apps.experiment.config import cell_dir, load_experiment
from flythinker.apps.experiment.methods import BASELINES
from flythinker.apps.experiment.run import remeasure_experiment, run_experiment
from flythinker.errors import UserError

TINY = ROOT / "src" / "flythinker" / "configs" / "experiment_tiny.yaml"


@pytest.fixture
def tiny_experiment(tmp_path, gitcommits, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's data paths are relative to the repository root
    return load_experiment(TINY, [f"out={tmp_path / 'exp'}", "splits=[user_based]", "ablations=[]"])


def test_every_method_trains_generates_and_scores_then_resumes(tiny_experiment, monkeypatch):
    exp = tiny_experiment
    assert set(exp.methods) == set(BASELINES)
    report = run_experiment(exp)
    text = report.read_text()
    for name in BASELINES:
        folder = cell_dir(exp, next(g for g in exp.groups() if g.name == name), "user_based", 0)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["n"] == 3 and metrics["method"] == name
        preds = (folder / "predictions.jsonl").read_text().splitlines()
        assert len(preds) == 3
        assert f"| {name} |" in text
    saved = json.loads((Path(exp.out) / "cells/user_based/static/seed0/train/final/flythinker.json").read_text())
    assert saved["variant"] == "static"
    static = json.loads((Path(exp.out) / "cells/user_based/static/seed0/latents.json").read_text())
    assert static["consecutive_cos"] == pytest.approx(1.0, abs=1e-4)  # one latent per example
    assert (
        "flythinker − sft" in text
        and "verdict at 95%" in text
        and "NLL per seed" in text
        and (Path(exp.out) / "results.png").is_file()
    )
    assert (Path(exp.out) / "results_paired.png").is_file()
    for run in Path(exp.out).glob("cells/*/*/*/train"):  # keep_weights: decoded (the default)
        assert (run / "final").is_dir() and not (run / "checkpoints").exists(), run

    # resume: finished cells are skipped (no training, files untouched); a cell without its
    # metrics is re-scored from its trained model without training again
    mtimes = {p: p.stat().st_mtime_ns for p in Path(exp.out).glob("cells/*/*/*/metrics.json")}
    redo = Path(exp.out) / "cells/user_based/flythinker/seed0/metrics.json"
    redo.unlink()
    import flythinker.train.trainer as trainer

    def no_training(*a, **k):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(trainer, "train", no_training)
    run_experiment(exp)
    assert redo.is_file()
    trained = json.loads((redo.parent / "train" / "result.json").read_text())["train_time_s"]
    assert (
        json.loads(redo.read_text())["train_s"] == trained > 0
    )  # the training's time, though this run trained nothing
    for p, t in mtimes.items():
        if p != redo:
            assert p.stat().st_mtime_ns == t, p

    # --remeasure: a static cell's NLL, probe and latents are measured again from its model; the
    # rest of its metrics, its predictions and the other rows stay
    st = Path(exp.out) / "cells/user_based/static/seed0"
    right = json.loads((st / "metrics.json").read_text())
    (st / "metrics.json").write_text(json.dumps({**right, "test_nll": 99.0, "dev_nll": 98.0}))
    (st / "latents.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in [st / "predictions.jsonl", st / "scores.npz", redo]}
    remeasure_experiment(dataclasses.replace(exp, probe=True), ["static"], log=lambda *_: None)
    again = json.loads((st / "metrics.json").read_text())
    assert again == {**right, "test_nll": again["test_nll"], "dev_nll": again["dev_nll"]}
    assert (again["test_nll"], again["dev_nll"]) == pytest.approx((right["test_nll"], right["dev_nll"]), rel=1e-6)
    assert json.loads((st / "latents.json").read_text())["nll_own"] == right["test_nll"]
    assert json.loads((st / "probe.json").read_text())["nll"]["own"] == right["test_nll"]
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())


def test_cell_configs_follow_the_registry(tiny_experiment):
    exp = tiny_experiment
    bases = {k: Path("/b") / k for k in exp.bases}
    groups = {g.name: g for g in exp.groups()}
    cfg = lambda name: cell_train_config(exp, groups[name], "user_based", 2, bases)  # noqa: E731
    assert cfg("nonpers").data.prompt["retrieval"] == "none" and cfg("nonpers").model.mode == "sft"
    assert cfg("rag").data.prompt["retrieval"] == "bm25"
    assert cfg("sft").data.prompt["retrieval"] == "recent"
    assert cfg("flythinker").model.mode == "flythinker" and cfg("flythinker").train.seed == 2
    assert cfg("think_then_generate").data.prompt["target_tokens"] == 32 + exp.think_extra_tokens
    assert cfg("flythinker").model.reasoner.path == str(Path("/b/r"))


def test_bad_experiment_configs_name_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match="unknown method 'cot'"):
        load_experiment(TINY, ["methods=[cot]"])
    with pytest.raises(UserError, match="reasoner"):
        load_experiment(TINY, ["reasoner=nope"])
    with pytest.raises(UserError, match="duplicate"):
        load_experiment(TINY, ["methods=[sft, sft]"])
    with pytest.raises(UserError, match="keep_weights: one of 'decoded', 'all', 'none', got 'some'"):
        load_experiment(TINY, ["keep_weights=some"])


def test_latent_diagnostics_agree_with_the_model(saved_tiny_model, gitcommits):
    from flythinker import FlyThinker
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig
    from flythinker.evaluate.diagnostics import latent_diagnostics
    from flythinker.evaluate.nll import mean_nll as teacher_forced_nll

    model = FlyThinker.from_pretrained(saved_tiny_model)
    tok = model.tokenizer
    exs = load_examples(gitcommits / "sample" / "user_based", split="test", limit=5)
    cfg = PromptConfig(retrieval="recent", k=1, profile_tokens=48, query_tokens=32, target_tokens=24)
    d = latent_diagnostics(model, tok, exs, cfg, batch_size=3)
    assert d["nll_own"] == pytest.approx(teacher_forced_nll(model, tok, exs, cfg), rel=1e-4)
    model.fusion.lam = 0.0
    assert d["nll_no_latent"] == pytest.approx(teacher_forced_nll(model, tok, exs, cfg), rel=1e-4)
    assert d["nll_other_latent"] != pytest.approx(d["nll_own"], rel=1e-6)
    assert d["offset_norm"] == pytest.approx(0.5 * d["rho"]) and -1 <= d["consecutive_cos"] <= 1
    model.fusion.lam = 0.5
    reused = latent_diagnostics(model, tok, exs, cfg, batch_size=3, nll_own=1.25)  # the caller's test NLL: pass skipped
    assert reused == {**d, "nll_own": 1.25}


def test_the_latent_table_shows_a_static_cell_without_negative_zeros(tiny_experiment):
    from flythinker.apps.experiment.report import latent_table

    exp = tiny_experiment
    folder = cell_dir(exp, next(g for g in exp.groups() if g.name == "static"), "user_based", 0)
    folder.mkdir(parents=True)
    keys = (
        "lam",
        "rho",
        "offset_norm",
        "token_embedding_norm",
        "consecutive_cos",
        "nll_own",
        "nll_no_latent",
        "nll_other_latent",
    )
    shares = {"constant": 0.993, "example": 0.007, "position": -5e-16}  # 1 - constant - example, rounded
    (folder / "latents.json").write_text(json.dumps({**dict.fromkeys(keys, 1.0), "latent_shares": shares}))
    lines = latent_table(exp)
    assert "| user_based | static | 1 | 0.993 | 0.007 | 0.000 |" in lines


def test_latent_diagnostics_of_a_static_latent_agree_with_its_forward(saved_tiny_model, gitcommits, monkeypatch):
    from flythinker import FlyThinker
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig
    from flythinker.evaluate.diagnostics import latent_diagnostics
    from flythinker.evaluate.nll import batches, mean_nll
    from flythinker.static import StaticThinker

    pair = FlyThinker.from_pretrained(saved_tiny_model)
    tok = pair.tokenizer
    model = StaticThinker(pair.generator, pair.reasoner, lam=0.5, generator_tokenizer=tok, reasoner_tokenizer=tok)
    exs = load_examples(gitcommits / "sample" / "user_based", split="test", limit=5)
    cfg = PromptConfig(retrieval="recent", k=1, profile_tokens=48, query_tokens=32, target_tokens=24)
    d = latent_diagnostics(model, tok, exs, cfg, batch_size=5)
    batch = next(batches(exs, tok, cfg, batch_size=5))  # the training forward (labels given) scores the same
    assert model(**batch).loss.item() == pytest.approx(mean_nll(model, tok, exs, cfg, batch_size=5), rel=1e-4)
    assert d["nll_own"] == pytest.approx(mean_nll(model, tok, exs, cfg, batch_size=5), rel=1e-4)
    assert d["consecutive_cos"] == pytest.approx(1.0, abs=1e-5)
    assert d["latent_shares"]["position"] == pytest.approx(0.0, abs=1e-6)
    # another example's latent: the training forward with each row's z_P swapped for the previous row's
    own_latent = model.static_latent
    monkeypatch.setattr(model, "static_latent", lambda z, last: own_latent(z, last).roll(1, dims=0))
    assert d["nll_other_latent"] == pytest.approx(mean_nll(model, tok, exs, cfg, batch_size=5), rel=1e-4)
    assert d["nll_other_latent"] != pytest.approx(d["nll_own"], rel=1e-6)
    monkeypatch.undo()
    model.fusion.lam = 0.0
    assert d["nll_no_latent"] == pytest.approx(mean_nll(model, tok, exs, cfg, batch_size=5), rel=1e-4)


def test_the_probe_reuses_the_callers_own_profile_pass(saved_tiny_model, gitcommits):
    from flythinker import FlyThinker
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig
    from flythinker.evaluate.diagnostics import profile_use
    from flythinker.evaluate.nll import per_example_nll

    model = FlyThinker.from_pretrained(saved_tiny_model)
    tok = model.tokenizer
    exs = load_examples(gitcommits / "sample" / "user_based", split="test", limit=5)
    cfg = PromptConfig(retrieval="recent", k=1, profile_tokens=48, query_tokens=32, target_tokens=24)
    fresh = profile_use(model, tok, exs, cfg, bootstrap=50, batch_size=2)
    own = per_example_nll(model, tok, exs, cfg, batch_size=2)
    assert profile_use(model, tok, exs, cfg, bootstrap=50, batch_size=2, own=own) == fresh
    bogus = (own[0] + 1.0, own[1])  # it is really used
    assert profile_use(model, tok, exs, cfg, bootstrap=50, batch_size=2, own=bogus)["nll"]["own"] > fresh["nll"]["own"]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "src" / "flythinker" / "configs").glob("experiment_*.yaml")), ids=lambda p: p.name
)
def test_shipped_experiment_configs_load_and_every_cell_builds_a_train_config(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    exp = load_experiment(path)
    assert path.read_text().startswith(f"# flythinker experiment src/flythinker/configs/{path.name}")
    cells = exp.cells()
    assert cells and len({(g.name, split, seed) for g, split, seed in cells}) == len(cells)
    bases = {name: Path("bases") / name for name in exp.bases}
    for group, split, seed in cells:
        cell_train_config(exp, group, split, seed, bases)  # every override applies and validates


def test_a_given_base_zero_shot_rows_the_probe_and_committed_cells(tmp_path, gitcommits, monkeypatch, sample_tokenizer):
    """A base folder as it is ({path: DIR}, like a pulled model): zero-shot rows train nothing, every
    cell gets probe.json, and a cell folder holding only the committed files counts as finished."""
    import shutil

    from tiny_models import tiny_llama

    monkeypatch.chdir(ROOT)
    base = tmp_path / "base"
    lm = tiny_llama(hidden=32, vocab=len(sample_tokenizer))
    lm.config.eos_token_id = lm.generation_config.eos_token_id = sample_tokenizer.eos_token_id
    lm.save_pretrained(base)
    sample_tokenizer.save_pretrained(base)
    exp = load_experiment(
        TINY,
        [
            f"out={tmp_path / 'exp'}",
            "splits=[user_based]",
            f"bases={{b: {{path: {base}}}}}",
            "generator=b",
            "reasoner=b",
            "methods=[flythinker]",
            "probe=true",
            "ablations=[{name: base_zeroshot, method: sft, zero_shot: true}]",
        ],
    )
    import flythinker.train.trainer as trainer

    calls = []
    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    run_experiment(exp)
    assert len(calls) == 1  # flythinker only: the zero-shot row trained nothing
    zs = cell_dir(exp, next(g for g in exp.groups() if g.name == "base_zeroshot"), "user_based", 0)
    m = json.loads((zs / "metrics.json").read_text())
    assert m["zero_shot"] and m["train_s"] == 0.0 and not (zs / "train").exists() and m["cell_s"] > 0
    probe = json.loads((zs / "probe.json").read_text())
    assert set(probe["nll"]) >= {"own", "none"} and probe["n"] == 3
    # a fresh machine with the committed files only: nothing reruns, the report (latents included) is rebuilt
    ft = cell_dir(exp, next(g for g in exp.groups() if g.name == "flythinker"), "user_based", 0)
    test_nll = json.loads((ft / "metrics.json").read_text())["test_nll"]  # one pass: the probe's own, the latents' own
    assert json.loads((ft / "probe.json").read_text())["nll"]["own"] == test_nll
    assert json.loads((ft / "latents.json").read_text())["nll_own"] == test_nll
    shutil.rmtree(ft / "train")
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a committed cell was run again"))
    text = run_experiment(exp).read_text()
    assert (
        "| flythinker |" in text
        and "Do the latents matter?" in text
        and "Where the fused latent" in text
        and "| user_based | base_zeroshot | 1 |" in text
    )


def test_committed_predictions_rescore_to_the_committed_metrics(tiny_experiment, capsys):
    """`flythinker evaluate` on a cell's predictions.jsonl gives its metrics.json's numbers."""
    from flythinker.cli import main

    exp = tiny_experiment
    exp.methods, exp.compare = ["sft"], []
    run_experiment(exp)
    cell = cell_dir(exp, exp.groups()[0], "user_based", 0)
    committed = json.loads((cell / "metrics.json").read_text())
    refs = ROOT / exp.data / "user_based" / "test.json"
    from flythinker.data.longlamp import load_examples

    subset = cell / "refs.json"  # the experiment scored limit_eval examples: the same references
    rows = json.loads(refs.read_text())[: len(load_examples(refs, limit=exp.limit_eval))]
    subset.write_text(json.dumps(rows))
    main(
        [
            "evaluate",
            "--predictions",
            str(cell / "predictions.jsonl"),
            "--references",
            str(subset),
            "--out",
            str(cell / "rescored"),
            "--no-bertscore",
            "--bootstrap",
            "0",
        ]
    )
    rescored = json.loads((cell / "rescored" / "metrics.json").read_text())
    for m in ("rouge1", "rougeL", "meteor", "bleu"):
        assert rescored[m] == pytest.approx(committed[m], rel=1e-9), m


def test_the_paired_verdict_reads_the_interval():
    from flythinker.apps.experiment.report import verdict

    assert verdict({"ci": {"low": 0.001, "high": 0.02}}, "flythinker", "sft") == "flythinker better"
    assert verdict({"ci": {"low": -0.02, "high": -0.001}}, "flythinker", "sft") == "sft better"
    assert verdict({"ci": {"low": -0.01, "high": 0.01}}, "flythinker", "sft") == "no difference shown"
    assert verdict({"ci": None}, "flythinker", "sft") == "–"  # no bootstrap
    shown, other_side = {"ci": {"low": 0.5, "high": 1.0}}, {"ci": {"low": -1.0, "high": -0.5}}
    assert verdict({"ci": {"low": 0.001, "high": 0.02}}, "flythinker", "sft", shown) == "flythinker better"
    assert verdict({"ci": {"low": 0.001, "high": 0.02}}, "flythinker", "sft", other_side) == "not shown over seeds"
    assert verdict({"ci": {"low": -0.01, "high": 0.01}}, "flythinker", "sft", shown) == "no difference shown"


def test_latent_shares_split_the_unit_latents_exactly():
    from flythinker.evaluate.diagnostics import LatentShares

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 7, 5, generator=g) + torch.tensor([3.0, 0, 0, 0, 0])  # a common direction plus noise
    keep = torch.rand(3, 7, generator=g) > 0.3
    keep[2] = False  # an example with no counted position is left out
    shares = LatentShares()
    shares.add(z[:2], keep[:2])
    shares.add(z[2:], keep[2:])
    got = shares.result()
    u = [torch.nn.functional.normalize(z[e][keep[e]].double(), dim=-1) for e in range(2)]
    allu = torch.cat(u)
    m = allu.mean(0)
    assert got["constant"] == pytest.approx(float(m.square().sum()))
    assert got["position"] == pytest.approx(float(sum((x - x.mean(0)).square().sum() for x in u) / len(allu)))
    assert got["constant"] + got["example"] + got["position"] == pytest.approx(1.0)
    assert 0.3 < got["constant"] < 1 and got["example"] > 0

    static = LatentShares()  # one vector per example: nothing changes along the response
    static.add(torch.tensor([[[1.0, 0], [2, 0]], [[0, 1], [0, 3]]]), torch.ones(2, 2, dtype=torch.bool))
    assert static.result() == pytest.approx({"constant": 0.5, "example": 0.5, "position": 0.0})
    assert LatentShares().result()["constant"] is None


def test_latent_shares_of_a_pair_are_those_of_the_diagnostics(saved_tiny_model, gitcommits):
    from flythinker import FlyThinker
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig
    from flythinker.evaluate.diagnostics import latent_diagnostics, latent_shares

    model = FlyThinker.from_pretrained(saved_tiny_model)
    exs = load_examples(gitcommits / "sample" / "user_based", split="test", limit=5)
    cfg = PromptConfig(retrieval="recent", k=1, profile_tokens=48, query_tokens=32, target_tokens=24)
    alone = latent_shares(model, model.tokenizer, exs, cfg, batch_size=2)
    assert alone == pytest.approx(latent_diagnostics(model, model.tokenizer, exs, cfg, batch_size=3)["latent_shares"])


def fake_row(root, name, seeds, offset):
    """A row of collect(): per seed a scores.npz whose ROUGE/METEOR are offset + seed for all 3 examples."""
    import numpy as np

    from flythinker.apps.experiment.report import pooled_scores

    folders = []
    for s in seeds:
        f = root / name / f"seed{s}"
        f.mkdir(parents=True)
        base = np.full(3, offset + s, dtype=float)
        np.savez(
            f / "scores.npz",
            ids=np.array(["a", "b", "c"]),
            rouge1=base,
            rougeL=base,
            meteor=base,
            bleu_stats=np.ones((3, 10), dtype=np.int64) * (s + 1),
        )
        folders.append(f)
    return {"folders": folders, "metrics": [{"seed": s} for s in seeds], "scores": pooled_scores(folders)}


def test_a_paired_comparison_pairs_the_seeds_both_rows_have(tmp_path):
    """sft with seeds 0 and 1 against flythinker with seed 0 only: the comparison is on seed 0;
    with no seed in common, every seed of each is pooled."""
    from flythinker.apps.experiment.report import matched_scores

    sft, ft = fake_row(tmp_path, "sft", [0, 1], 0.0), fake_row(tmp_path, "flythinker", [0], 10.0)
    a, b, seeds = matched_scores(ft, sft)
    assert seeds == [0] and a.rouge1.tolist() == [10.0] * 3 and b.rouge1.tolist() == [0.0] * 3  # sft seed 1 left out
    assert sft["scores"].rouge1.tolist() == [0.5] * 3  # (its table row still pools both)
    ft2 = fake_row(tmp_path, "flythinker2", [0, 1], 10.0)
    a, b, seeds = matched_scores(ft2, sft)
    assert seeds == [0, 1] and a is ft2["scores"] and b is sft["scores"]
    a, b, seeds = matched_scores(fake_row(tmp_path, "static", [2], 20.0), sft)
    assert seeds == [] and b is sft["scores"]


def test_the_seed_table_compares_seed_by_seed_and_each_row_with_itself(tmp_path):
    from types import SimpleNamespace

    from flythinker.apps.experiment.report import paired_tables, seed_table

    rows = {
        "sft": fake_row(tmp_path, "sft", [0, 1, 2], 0.0),
        "flythinker": fake_row(tmp_path, "flythinker", [0, 2], 10.0),
        "static": fake_row(tmp_path, "static", [0], 5.0),
    }
    exp = SimpleNamespace(compare=[["flythinker", "sft"], ["static", "sft"]], bootstrap=50)
    summary = {}
    paired_tables("user_based", rows, exp, summary)  # the per-seed comparisons the seed table reads
    lines = [
        line for line in seed_table("user_based", rows, exp, summary) if line.startswith("| ") and "---" not in line
    ][1:]
    assert [line.split(" | ")[:3] for line in lines] == [
        ["| flythinker − sft", "seed 0", "+10.0000 [10.0000, 10.0000]*"],  # static − sft: one seed in common, no rows
        ["| flythinker − sft", "seed 2", "+10.0000 [10.0000, 10.0000]*"],
        ["| flythinker − sft", "mean of 2 seeds, t over seeds", "+10.0000 [10.0000, 10.0000]*"],  # sd 0 over seeds
        ["| sft − sft", "seed 1 − seed 0", "+1.0000 [1.0000, 1.0000]*"],
        ["| sft − sft", "seed 2 − seed 0", "+2.0000 [2.0000, 2.0000]*"],
        ["| flythinker − flythinker", "seed 2 − seed 0", "+2.0000 [2.0000, 2.0000]*"],
    ]
    assert seed_table("user_based", {"static": rows["static"]}, exp, {}) == []  # nothing with 2 seeds


def test_over_seeds_takes_the_seed_as_the_unit(tmp_path):
    """Per-seed differences +10 and +12 (the bootstrap over examples is a point on each): mean +11,
    sd √2, t CI with 1 degree of freedom ±12.71·√2/√2. The pooled bootstrap excludes 0, the t CI
    does not, so the paired table's verdict is "not shown over seeds"; ROUGE-L (+10 on both seeds,
    sd 0) is shown."""
    from types import SimpleNamespace

    import numpy as np

    from flythinker.apps.experiment.report import paired_tables, plot_paired, pooled_scores, seed_table

    ft = fake_row(tmp_path, "flythinker", [0, 1], 10.0)
    for f, v in zip(ft["folders"], (10.0, 13.0)):  # seed 1's ROUGE-1 13 against sft seed 1's 1: +12
        z = dict(np.load(f / "scores.npz"))
        z["rouge1"] = np.full(3, v)
        np.savez(f / "scores.npz", **z)
    ft["scores"] = pooled_scores(ft["folders"])
    rows = {"sft": fake_row(tmp_path, "sft", [0, 1], 0.0), "flythinker": ft}
    exp = SimpleNamespace(compare=[["flythinker", "sft"]], bootstrap=50)
    summary = {}
    table = [
        line.split(" | ") for line in paired_tables("user_based", rows, exp, summary) if line.startswith("| ROUGE")
    ]
    mean_row = next(line for line in seed_table("user_based", rows, exp, summary) if "t over seeds |" in line)
    assert mean_row.split(" | ")[2] == "+11.0000 [-1.7062, 23.7062]"  # 11 ± 12.7062: no star, the CI holds 0
    assert (
        table[0][0] == "| ROUGE-1"
        and table[0][4] == "+11.0000 [-1.7062, 23.7062]"
        and table[0][-1] == "not shown over seeds |"
    )
    assert table[1][0] == "| ROUGE-L" and table[1][-1] == "flythinker better |"
    over = summary["flythinker-vs-sft"]["over_seeds"]
    assert over["seeds"] == [0, 1] and over["rouge1"]["sd"] == pytest.approx(2**0.5)
    assert summary["flythinker-vs-sft"]["metrics"]["rouge1"]["verdict"] == "not shown over seeds"
    per_seed = summary["flythinker-vs-sft"]["per_seed"]  # what the forest plot draws in grey
    assert [(p["seed"], p["rouge1"]["diff"]) for p in per_seed] == [(0, 10.0), (1, 12.0)]
    assert (
        plot_paired({"user_based": summary}, tmp_path / "paired.png") and (tmp_path / "paired.png").stat().st_size > 0
    )
    assert not plot_paired({"user_based": {"sft": {}}}, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
