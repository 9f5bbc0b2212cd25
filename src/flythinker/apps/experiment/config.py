"""The experiment's configuration: rows (methods and ablations) × splits × seeds, and where each
cell lives (``OUT/cells/SPLIT/NAME/seedS/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flythinker.errors import UserError


@dataclass
class CellGroup:
    """A row of the results: a method with optional config overrides, on some splits and seeds."""

    name: str
    """Row label (unique), e.g. "flythinker" or "flythinker_lam1"."""
    method: str
    """A registry name of flythinker.apps.experiment.methods.BASELINES."""
    set: list[str] = field(default_factory=list)
    """Dotted overrides of the training config, e.g. ["model.lam=1.0"]."""
    reasoner: str | None = None
    """Base model (a key of ``bases``) for R instead of the experiment's reasoner."""
    splits: list[str] | None = None
    """Splits to run (None: all of the experiment's)."""
    seeds: list[int] | None = None
    """Seeds to run (None: all of the experiment's)."""
    zero_shot: bool = False
    """Score the base G as it is, with the method's prompts (no fine-tuning; G-alone methods only)."""


KEEP_WEIGHTS = ("decoded", "all", "none")


@dataclass
class ExperimentConfig:
    """The whole matrix: data, base models, methods, ablations, the shared recipe."""

    out: str = "runs/experiment"
    """Output folder (relative to the current directory)."""
    data: str = "../shared/data/gitcommits"
    """Folder with one LongLaMP-format folder per split (and corpus.jsonl.gz for pretraining)."""
    corpus: str = "../shared/data/gitcommits"
    """Folder with corpus.jsonl.gz and the full splits (what pretraining must exclude)."""
    splits: list[str] = field(default_factory=lambda: ["user_based", "temporal"])
    """Split folders under ``data``."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Fine-tuning seeds (data order) and sampling seeds."""
    bases: dict = field(default_factory=dict)
    """Base LMs: name -> ``{pull: NAME}`` (a model of `flythinker models list`), ``{path: DIR}``
    (a local folder), or flythinker.apps.experiment.pretrain.PretrainConfig fields (pre-trained here)."""
    generator: str = "g"
    """Base of G (a key of ``bases``)."""
    reasoner: str = "r"
    """Base of R (a key of ``bases``)."""
    methods: list[str] = field(default_factory=lambda: ["nonpers", "rag", "sft", "static", "flythinker"])
    """Main rows: registry names, each on every split (and every seed unless seeds_by_method says)."""
    seeds_by_method: dict = field(default_factory=dict)
    """Fewer seeds for some main rows when compute is short, e.g. {nonpers: [0]}."""
    ablations: list[CellGroup] = field(default_factory=list)
    """Extra rows (λ sweep, Reasoner size, frozen R, fusion), run after every main cell."""
    train: dict = field(default_factory=dict)
    """The shared training config (model/data/train sections of ``flythinker train``)."""
    decode: dict = field(default_factory=dict)
    """flythinker.apps.generate.DecodeSettings fields (paper: temperature 0.8, top_p 0.95)."""
    think_extra_tokens: int = 48
    """Extra target and generation budget for the <think> block."""
    limit_train: int | None = None
    """Use only the first N training examples of each split."""
    limit_eval: int | None = None
    """Use only the first N dev and test examples (for quick runs)."""
    bertscore: bool = True
    """Score BERTScore (all-MiniLM-L6-v2, local)."""
    bootstrap: int = 1000
    """Bootstrap resamples for CIs and paired comparisons."""
    compare: list[list[str]] = field(default_factory=lambda: [["flythinker", "sft"], ["static", "sft"]])
    """Paired comparisons [A, B] written to the report (A − B)."""
    checkpoint: str = "final"
    """Which trained model a cell decodes and measures: "final" (after the last step) or "best" (the
    lowest dev NLL of the run's evaluations: the number of epochs chosen on dev, never on test)."""
    keep_weights: str = "decoded"
    """What a finished cell keeps of its training run: "decoded" (the model it decoded, for
    ``--remeasure``; the resumable checkpoints and the other model folder are deleted), "all", or
    "none" (predictions, scores and logs only: a full fine-tuning grid stays small on disk)."""
    probe: bool = False
    """Also run the profile-use probe (NLL with own / no / another user's profile) on every cell's
    model and test split: ``probe.json`` (does fine-tuning keep, lose or grow the profile's use?)."""

    def __post_init__(self):
        if self.checkpoint not in ("final", "best"):
            raise UserError(f"checkpoint: 'final' or 'best', got {self.checkpoint!r}")
        if self.keep_weights not in KEEP_WEIGHTS:
            raise UserError(f"keep_weights: one of {', '.join(map(repr, KEEP_WEIGHTS))}, got {self.keep_weights!r}")

    def groups(self) -> list[CellGroup]:
        from flythinker.apps.experiment.methods import get_baseline

        rows = [CellGroup(name=m, method=m, seeds=self.seeds_by_method.get(m)) for m in self.methods]
        rows += list(self.ablations)
        names = [g.name for g in rows]
        if len(set(names)) != len(names):
            raise UserError(f"experiment: duplicate row names {sorted(n for n in set(names) if names.count(n) > 1)}")
        for g in rows:
            if g.zero_shot and get_baseline(g.method).model != "sft":
                raise UserError(f"ablations.{g.name}.zero_shot: only for methods of G alone, not {g.method!r}")
            get_baseline(g.method)
            if g.reasoner is not None and g.reasoner not in self.bases:
                raise UserError(
                    f"ablations.{g.name}.reasoner: {g.reasoner!r} is not one of bases ({', '.join(self.bases)})"
                )
        return rows

    def cells(self, only: list[str] | None = None) -> list[tuple[CellGroup, str, int]]:
        """Every (row, split, seed) to run: main rows seed-major (a run cut short still has every
        method), then the ablations."""
        out = []
        groups = [g for g in self.groups() if not only or g.name in only]
        main = [g for g in groups if g.name in self.methods]
        for part in (main, [g for g in groups if g not in main]):
            for seed in sorted({s for g in part for s in (g.seeds or self.seeds)}):
                for split in self.splits:
                    out += [
                        (g, split, seed)
                        for g in part
                        if split in (g.splits or self.splits) and seed in (g.seeds or self.seeds)
                    ]
        return out


def load_experiment(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML (``KEY=VALUE`` overrides as for ``flythinker train``).

    >>> exp = load_experiment("src/flythinker/configs/experiment_tiny.yaml", ["seeds=[0]"])  # doctest: +SKIP
    """
    import yaml

    from flythinker.apps.experiment.pretrain import PretrainConfig
    from flythinker.train.config import apply_overrides, from_dict

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: experiment config not found")
    raw = apply_overrides(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, list(overrides))
    try:
        exp = from_dict(ExperimentConfig, raw)
        for name, spec in exp.bases.items():
            if not is_given_base(spec):
                from_dict(PretrainConfig, spec, f"bases.{name}.")
        for key in ("generator", "reasoner"):
            if getattr(exp, key) not in exp.bases:
                raise UserError(f"{key}: {getattr(exp, key)!r} is not one of bases ({', '.join(exp.bases) or 'none'})")
        exp.groups()
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return exp


def cell_dir(exp: ExperimentConfig, group: CellGroup, split: str, seed: int) -> Path:
    return Path(exp.out) / "cells" / split / group.name / f"seed{seed}"


def is_given_base(spec: dict) -> bool:
    """A base that exists already (``{pull: NAME}`` or ``{path: DIR}``), not one to pre-train."""
    return isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("pull", "path")
