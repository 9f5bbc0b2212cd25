"""``flythinker experiment CONFIG``: the paper's comparison as one resumable matrix.

A run (1) pre-trains the base LMs on the corpus (:mod:`.pretrain`), (2) fine-tunes
every cell — a method (:mod:`.methods`) on a split with a seed — with the one trainer
(:func:`flythinker.train.trainer.train`), (3) generates the test split (paper sampling: T 0.8,
top-p 0.95), (4) scores it (ROUGE-1/L, METEOR, BLEU, BERTScore, by position, teacher-forced
NLL on dev and test) and (5) writes ``OUT/results.md``, ``OUT/results.json`` and
``OUT/results.png`` (:mod:`.report`): methods × metrics × splits,
seed-averaged, with bootstrap CIs and paired comparisons (e.g. FlyThinker − SFT).

Every cell lives in ``OUT/cells/SPLIT/NAME/seedS/`` (:mod:`.cells`; the matrix is :mod:`.config`);
a cell with ``metrics.json`` is finished and skipped, an interrupted one resumes (trainer
checkpoints, appended predictions).

    flythinker experiment src/flythinker/configs/experiment_gitcommits.yaml
    flythinker experiment src/flythinker/configs/experiment_tiny.yaml --only sft,flythinker
    flythinker experiment src/flythinker/configs/experiment_gitcommits_smollm2.yaml --status
    flythinker experiment src/flythinker/configs/experiment_gitcommits_smollm2.yaml --only static --remeasure
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from flythinker.apps.experiment.config import ExperimentConfig, cell_dir, load_experiment
from flythinker.apps.experiment.report import write_report
from flythinker.errors import UserError


def run_experiment(exp: ExperimentConfig, only: list[str] | None = None, log=print) -> Path:
    """Pre-train the bases, run every unfinished cell, write the report; returns OUT/results.md.

    >>> run_experiment(load_experiment("src/flythinker/configs/experiment_tiny.yaml"))  # doctest: +SKIP
    """
    from flythinker.apps.experiment.cells import run_cell

    out = Path(exp.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(asdict(exp), indent=2) + "\n")
    bases = resolve_bases(exp, out, log)
    cells = exp.cells(only)
    for i, (group, split, seed) in enumerate(cells, 1):
        done = (cell_dir(exp, group, split, seed) / "metrics.json").is_file()
        log(f"cell {i}/{len(cells)}: {split}/{group.name}/seed{seed}" + (" (done, skipped)" if done else ""))
        run_cell(exp, group, split, seed, bases, log=log)
    return write_report(exp)


def remeasure_experiment(exp: ExperimentConfig, only: list[str] | None = None, log=print) -> Path:
    """:func:`~.cells.remeasure_cell` for every finished cell (of the rows in ``only``), then the
    report; unfinished cells are left alone. Returns OUT/results.md."""
    from flythinker.apps.experiment.cells import remeasure_cell

    bases = resolve_bases(exp, Path(exp.out), log)
    for group, split, seed in exp.cells(only):
        if (cell_dir(exp, group, split, seed) / "metrics.json").is_file():
            remeasure_cell(exp, group, split, seed, bases, log=log)
        else:
            log(f"{split}/{group.name}/seed{seed}: not finished, left alone")
    return write_report(exp)


def resolve_bases(exp: ExperimentConfig, out: Path, log=print) -> dict[str, Path]:
    """Every base's folder: pulled (``flythinker models pull``), given, or pre-trained here."""
    from flythinker.apps.experiment.config import is_given_base

    bases, to_train = {}, {}
    for name, spec in exp.bases.items():
        if not is_given_base(spec):
            to_train[name] = spec
        elif "pull" in spec:
            from flythinker.apps.models import pull

            bases[name] = pull(spec["pull"], log=log)
        else:
            bases[name] = Path(spec["path"]).expanduser()
    if to_train:
        from flythinker.apps.experiment.pretrain import PretrainConfig, pretrain_bases

        bases.update(
            pretrain_bases({k: PretrainConfig(**v) for k, v in to_train.items()}, exp.corpus, out / "bases", log=log)
        )
    return bases


def experiment_command(
    config: Path = typer.Argument(
        ..., help="Experiment YAML (e.g. src/flythinker/configs/experiment_gitcommits.yaml)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE override, e.g. --set seeds=[0]."),
    only: str = typer.Option("", "--only", help="Comma-separated row names to run (default: all)."),
    report_only: bool = typer.Option(False, "--report-only", help="Only rewrite the report from finished cells."),
    status: bool = typer.Option(
        False, "--status", help="Only show where the matrix stands: every cell's state and the time left."
    ),
    remeasure: bool = typer.Option(
        False,
        "--remeasure",
        help="Only measure finished cells' dev/test NLL, probe and latent "
        "diagnostics again from their trained models (predictions and scores stay), then rewrite the report.",
    ),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU when there is one)."),
) -> None:
    """Run the baselines × splits × seeds matrix (resumable) and write BENCHMARKS-ready tables."""
    from flythinker.bundled import resolve_config

    config = resolve_config(config)
    exp = load_experiment(config, overrides)
    if not (status or report_only):  # these two run no model
        from flythinker.devices import use_device

        use_device(device)
    names = [n.strip() for n in only.split(",") if n.strip()] or None
    if names:
        unknown = set(names) - {g.name for g in exp.groups()}
        if unknown:
            raise UserError(f"--only: unknown row(s) {sorted(unknown)}")
    if status:
        from flythinker.apps.experiment.status import print_status

        print_status(exp, names)
        return
    if report_only:
        path = write_report(exp)
    elif remeasure:
        path = remeasure_experiment(exp, names)
    else:
        path = run_experiment(exp, names)
    print(f"report: {path}")
