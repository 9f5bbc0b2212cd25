"""`flythinker experiment CONFIG --status`: every cell's state read back from its folder, and the
time left estimated from the finished cells of its kind."""

from __future__ import annotations

import json

import pytest
from tiny_models import ROOT
from typer.testing import CliRunner

from flythinker.apps.experiment.config import cell_dir, load_experiment
from flythinker.apps.experiment.status import matrix_status

SMOLLM2 = ROOT / "src" / "flythinker" / "configs" / "experiment_gitcommits_smollm2.yaml"


@pytest.fixture
def matrix(tmp_path, gitcommits, monkeypatch):
    """The SmolLM2 matrix on user_based only, 2 seeds, in a fresh folder with hand-made cells:
    sft/seed0 finished, flythinker/seed0 finished, sft/seed1 training, flythinker/seed1 decoding."""
    monkeypatch.chdir(ROOT)
    exp = load_experiment(
        SMOLLM2,
        [
            f"out={tmp_path / 'exp'}",
            "splits=[user_based]",
            "seeds=[0, 1]",
            "methods=[sft, flythinker]",
            "seeds_by_method={}",
            "ablations=[{name: base_zeroshot, method: sft, zero_shot: true, seeds: [0]}]",
        ],
    )
    row = {g.name: g for g in exp.groups()}

    def folder(name, seed):
        d = cell_dir(exp, row[name], "user_based", seed)
        d.mkdir(parents=True)
        return d

    (folder("sft", 0) / "metrics.json").write_text(json.dumps({"train_s": 600.0, "cell_s": 1800.0}))
    (folder("flythinker", 0) / "metrics.json").write_text(json.dumps({"train_s": 1800.0, "cell_s": 6000.0}))
    train = folder("sft", 1) / "train"
    (train / "checkpoints" / "step-00000020").mkdir(parents=True)
    (train / "log.jsonl").write_text(
        "".join(json.dumps({"kind": "train", "step": s}) + "\n" for s in range(1, 31)) + '{"kind": "tr'
    )  # the last line cut short by a kill
    ft1 = folder("flythinker", 1)
    (ft1 / "train" / "final").mkdir(parents=True)
    (ft1 / "predictions.jsonl").write_text('{"id": "a", "output": "x"}\n' * 40)
    return exp


def test_the_status_reads_each_cells_progress_and_estimates_what_is_left(matrix):
    states = {s.cell: s for s in matrix_status(matrix)}
    assert list(states) == [
        "user_based/sft/seed0",
        "user_based/flythinker/seed0",
        "user_based/sft/seed1",
        "user_based/flythinker/seed1",
        "user_based/base_zeroshot/seed0",
    ]  # run order
    n_test = 139  # the user_based test split
    done, ft_done, training, decoding, zs = states.values()
    assert (done.state, done.train_s, done.cell_s, done.left_s) == ("done", 600.0, 1800.0, 0.0)
    assert training.state == "training" and training.detail == "step 30/60, resumes from 20"
    assert training.left_s == pytest.approx(600 * 0.5 + 1200)  # half the training, all the rest
    assert decoding.state == "decoding" and decoding.detail == f"40/{n_test} predicted"
    assert decoding.left_s == pytest.approx(4200 * (1 - 40 / n_test))  # trained; the rest scaled
    assert zs.state == "to do" and zs.kind == "G alone" and zs.left_s == pytest.approx(1200)  # no training


def test_the_status_command_prints_the_table_and_a_summary(matrix, tmp_path):
    from flythinker.cli import app

    result = CliRunner().invoke(
        app,
        [
            "experiment",
            str(SMOLLM2),
            "--status",
            "--set",
            f"out={matrix.out}",
            "--set",
            "splits=[user_based]",
            "--set",
            "seeds=[0, 1]",
            "--set",
            "methods=[sft, flythinker]",
            "--set",
            "seeds_by_method={}",
            "--set",
            "ablations=[]",
            "--only",
            "sft",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "user_based/sft/seed1" in result.output and "flythinker" not in result.output.split("run order")[1]
    assert "1 of 2 cells finished; about 25 min left for 1 cell at" in result.output
    assert not (tmp_path / "exp" / "experiment.json").exists()  # a status runs nothing, writes nothing
