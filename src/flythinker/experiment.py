"""``flythinker experiment CONFIG``: the paper's comparison as one resumable matrix.

A run (1) pre-trains the base LMs on the corpus (:mod:`flythinker.pretrain`), (2) fine-tunes
every cell — a method (:mod:`flythinker.baselines`) on a split with a seed — with the one trainer
(:func:`flythinker.train.trainer.train`), (3) generates the test split (paper sampling: T 0.8,
top-p 0.95), (4) scores it (ROUGE-1/L, METEOR, BLEU, BERTScore, by position, teacher-forced
NLL on dev and test) and (5) writes ``OUT/results.md``, ``OUT/results.json`` and
``OUT/results.png`` (:mod:`flythinker.experiment_report`): methods × metrics × splits,
seed-averaged, with bootstrap CIs and paired comparisons (e.g. FlyThinker − SFT).

Every cell lives in ``OUT/cells/SPLIT/NAME/seedS/``; a cell with ``metrics.json`` is finished
and skipped, an interrupted one resumes (trainer checkpoints, appended predictions).

    flythinker experiment src/flythinker/configs/experiment_gitcommits.yaml
    flythinker experiment src/flythinker/configs/experiment_tiny.yaml --only sft,flythinker
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import typer

from flythinker.errors import UserError


@dataclass
class CellGroup:
    """A row of the results: a method with optional config overrides, on some splits and seeds."""

    name: str
    """Row label (unique), e.g. "flythinker" or "flythinker_lam1"."""
    method: str
    """A registry name of flythinker.baselines.BASELINES."""
    set: list[str] = field(default_factory=list)
    """Dotted overrides of the training config, e.g. ["model.lam=1.0"]."""
    reasoner: str | None = None
    """Base model (a key of ``bases``) for R instead of the experiment's reasoner."""
    splits: list[str] | None = None
    """Splits to run (None: all of the experiment's)."""
    seeds: list[int] | None = None
    """Seeds to run (None: all of the experiment's)."""


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
    """Base LMs to pre-train: name -> flythinker.pretrain.PretrainConfig fields."""
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
    """flythinker.predict.DecodeSettings fields (paper: temperature 0.8, top_p 0.95)."""
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

    def groups(self) -> list[CellGroup]:
        from flythinker.baselines import get_baseline

        rows = [CellGroup(name=m, method=m, seeds=self.seeds_by_method.get(m)) for m in self.methods]
        rows += list(self.ablations)
        names = [g.name for g in rows]
        if len(set(names)) != len(names):
            raise UserError(f"experiment: duplicate row names {sorted(n for n in set(names) if names.count(n) > 1)}")
        for g in rows:
            get_baseline(g.method)
            if g.reasoner is not None and g.reasoner not in self.bases:
                raise UserError(f"ablations.{g.name}.reasoner: {g.reasoner!r} is not one of bases ({', '.join(self.bases)})")
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
                    out += [(g, split, seed) for g in part
                            if split in (g.splits or self.splits) and seed in (g.seeds or self.seeds)]
        return out


def load_experiment(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML (``KEY=VALUE`` overrides as for ``flythinker train``).

    >>> exp = load_experiment("src/flythinker/configs/experiment_tiny.yaml", ["seeds=[0]"])  # doctest: +SKIP
    """
    import yaml

    from flythinker.pretrain import PretrainConfig
    from flythinker.train.config import apply_overrides, build

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: experiment config not found")
    raw = apply_overrides(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, list(overrides))
    try:
        exp = build(ExperimentConfig, raw)
        for name, spec in exp.bases.items():
            build(PretrainConfig, spec, f"bases.{name}.")
        for key in ("generator", "reasoner"):
            if getattr(exp, key) not in exp.bases:
                raise UserError(f"{key}: {getattr(exp, key)!r} is not one of bases ({', '.join(exp.bases) or 'none'})")
        exp.groups()
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return exp


# --- one cell -----------------------------------------------------------------------------------


def cell_dir(exp: ExperimentConfig, group: CellGroup, split: str, seed: int) -> Path:
    return Path(exp.out) / "cells" / split / group.name / f"seed{seed}"


def cell_train_config(exp: ExperimentConfig, group: CellGroup, split: str, seed: int, bases: dict[str, Path]):
    """The TrainConfig of one cell: the shared recipe + the method's settings + the row's overrides."""
    from flythinker.baselines import get_baseline
    from flythinker.train.config import TrainConfig, apply_overrides, build

    b = get_baseline(group.method)
    raw = copy.deepcopy(exp.train)
    model = raw.setdefault("model", {})
    model["mode"] = "sft" if b.model == "sft" else "flythinker"
    model["generator"] = {**model.get("generator", {}), "path": str(bases[exp.generator])}
    model["reasoner"] = {**model.get("reasoner", {}), "path": str(bases[group.reasoner or exp.reasoner])}
    model["tokenizer"] = str(bases[exp.generator])
    data = raw.setdefault("data", {})
    data["path"] = str(Path(exp.data) / split)
    prompt = data.setdefault("prompt", {})
    if b.retrieval is not None:
        prompt["retrieval"] = b.retrieval
    if b.think:
        prompt["target_tokens"] = prompt.get("target_tokens", 1000) + exp.think_extra_tokens
    t = raw.setdefault("train", {})
    t.update(seed=seed, eval=False, resume=True, overwrite=False)
    raw = apply_overrides(raw, list(group.set))
    return build(TrainConfig, raw)


def build_cell_model(cfg, method: str, tokenizer):
    """G alone (sft-style methods), a FlyThinker or a StaticThinker, from the base folders."""
    from flythinker.baselines import StaticThinker, get_baseline
    from flythinker.model import FlyThinker
    from flythinker.train.build import load_causal_lm

    g = load_causal_lm(cfg.model.generator, "model.generator")
    kind = get_baseline(method).model
    if kind == "sft":
        return g
    r = load_causal_lm(cfg.model.reasoner, "model.reasoner")
    cls = StaticThinker if kind == "static" else FlyThinker
    return cls(g, r, lam=cfg.model.lam, fusion=cfg.model.fusion, generator_tokenizer=tokenizer,
               reasoner_tokenizer=tokenizer)


def teacher_forced_nll(model, tokenizer, examples, prompt_cfg, batch_size: int = 16) -> float:
    """Mean cross-entropy (nats per response token) of the references under the model."""
    import torch

    from flythinker.data.prompts import collate, encode_for_training

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            feats = [encode_for_training(e, tokenizer, prompt_cfg) for e in examples[i: i + batch_size]]
            batch = collate(feats, pad_token_id=tokenizer.pad_token_id, padding_side="left")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           labels=batch["labels"]).logits  # (B, T, V)
            labels = batch["labels"][:, 1:]  # (B, T-1)
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels,
                                                   ignore_index=-100, reduction="sum")
            total, count = total + ce.item(), count + int((labels != -100).sum())
    return total / max(count, 1)


def latent_diagnostics(model, tokenizer, examples, prompt_cfg, batch_size: int = 16) -> dict:
    """Does G use R's latents, and how big are they? Measured on reference texts (teacher forcing).

    * ``nll_own`` / ``nll_no_latent`` (λ = 0 at inference) / ``nll_other_latent`` (each row gets
      the latents of the next example in the batch, where both rows have tokens): if the last two
      are close to the first, G has learnt to ignore what R says about *this* user;
    * ``rho`` (ρ), ``offset_norm`` (λρ), ``token_embedding_norm`` (mean ‖E_G(s)‖ over response
      tokens) — the latent's size relative to the token it is added to;
    * ``consecutive_cos``: mean cosine of z_{i-1} and z_i over response positions (≈ 1: the
      latent barely changes while generating, i.e. it acts like a static latent).
    """
    import torch

    from flythinker.data.prompts import collate, encode_for_training
    from flythinker.fusion import shift_latents
    from flythinker.model import positions_from_mask

    sums = dict(own=0.0, none=0.0, other=0.0, tokens=0, emb=0.0, cos=0.0, pairs=0)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            feats = [encode_for_training(e, tokenizer, prompt_cfg) for e in examples[i: i + batch_size]]
            b = collate(feats, pad_token_id=tokenizer.pad_token_id, padding_side="left")
            ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]  # (B, T)
            pos = positions_from_mask(mask)
            embeds = model.generator.get_input_embeddings()(ids)  # (B, T, d_G)
            z, zmask = shift_latents(model.reason(ids, mask, pos), mask)  # (B, T, d_R), (B, T)
            other_mask = zmask * zmask.roll(1, dims=0)

            def nll(e):
                logits = model.generator(inputs_embeds=e, attention_mask=mask, position_ids=pos).logits
                return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                                         ignore_index=-100, reduction="sum").item()

            rho = model.rho()
            sums["own"] += nll(model.fusion(embeds, z, rho, zmask))
            sums["none"] += nll(embeds)
            sums["other"] += nll(model.fusion(embeds, z.roll(1, dims=0), rho, other_mask))
            resp = labels != -100  # (B, T) response tokens (and EOS)
            sums["tokens"] += int(resp.sum())
            sums["emb"] += embeds[resp].norm(dim=-1).sum().item()
            both = resp[:, 1:] & resp[:, :-1]
            cos = torch.nn.functional.cosine_similarity(z[:, 1:], z[:, :-1], dim=-1)  # (B, T-1)
            sums["cos"] += cos[both].sum().item()
            sums["pairs"] += int(both.sum())
    n = max(sums["tokens"], 1)
    return {"nll_own": sums["own"] / n, "nll_no_latent": sums["none"] / n, "nll_other_latent": sums["other"] / n,
            "rho": float(model.rho()), "lam": model.lam, "offset_norm": model.lam * float(model.rho()),
            "token_embedding_norm": sums["emb"] / n, "consecutive_cos": sums["cos"] / max(sums["pairs"], 1)}


def cell_latents(exp: ExperimentConfig, group: CellGroup, split: str, seed: int) -> dict | None:
    """:func:`latent_diagnostics` of a finished FlyThinker cell on its test split (cached in
    ``latents.json``); None for other methods or unfinished cells."""
    from flythinker.baselines import get_baseline

    out = cell_dir(exp, group, split, seed)
    if get_baseline(group.method).model != "flythinker" or not (out / "train" / "final").is_dir():
        return None
    if not (out / "latents.json").is_file():
        from flythinker.data.longlamp import load_examples
        from flythinker.predict import load_for_inference

        model, tok = load_for_inference(out / "train" / "final")
        exs = load_examples(Path(exp.data) / split, split="test", limit=exp.limit_eval)
        prompt_cfg = cell_train_config(exp, group, split, seed, {k: Path(k) for k in exp.bases}).data.prompt_config()
        (out / "latents.json").write_text(json.dumps(latent_diagnostics(model, tok, exs, prompt_cfg), indent=2) + "\n")
    return json.loads((out / "latents.json").read_text())


def run_cell(exp: ExperimentConfig, group: CellGroup, split: str, seed: int, bases: dict[str, Path], log=print) -> Path:
    """Train, predict, score one cell; returns its folder (skips a finished one)."""
    import numpy as np

    from flythinker.baselines import get_baseline, strip_think, with_reasoning
    from flythinker.data.longlamp import load_examples
    from flythinker.evaluate.metrics import metrics_from_scores, score_examples, summarize
    from flythinker.predict import DecodeSettings, generate_predictions, load_for_inference
    from flythinker.train.build import build_tokenizer
    from flythinker.train.trainer import train

    out = cell_dir(exp, group, split, seed)
    if (out / "metrics.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    b = get_baseline(group.method)
    cfg = cell_train_config(exp, group, split, seed, bases)
    prompt_cfg = cfg.data.prompt_config()
    folder = Path(exp.data) / split
    train_exs = load_examples(folder, split="train", limit=exp.limit_train)
    dev_exs = load_examples(folder, split="dev", limit=exp.limit_eval)
    test_exs = load_examples(folder, split="test", limit=exp.limit_eval)
    if b.think:
        train_exs = [with_reasoning(e) for e in train_exs]
    t0 = time.perf_counter()
    if not (out / "train" / "final").is_dir():
        tok = build_tokenizer(cfg.model, train_exs)
        train(cfg, out / "train", model=build_cell_model(cfg, group.method, tok), tokenizer=tok,
              train_examples=train_exs)
    train_s = time.perf_counter() - t0
    model, tok = load_for_inference(out / "train" / "final")
    # NLL of the references (response tokens only): a think model is scored on the plan too,
    # so its NLL is not comparable and left out
    nll = {} if b.think else {f"{name}_nll": teacher_forced_nll(model, tok, exs, prompt_cfg)
                              for name, exs in (("dev", dev_exs), ("test", test_exs))}
    settings = DecodeSettings(**{**exp.decode, "seed": 1000 * seed})
    if b.think:
        settings.max_new_tokens += exp.think_extra_tokens
    stats = generate_predictions(model, tok, test_exs, out / "predictions.jsonl", prompt_cfg=prompt_cfg,
                                 settings=settings, progress=False)
    by_id = {json.loads(line)["id"]: json.loads(line)["prediction"]
             for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()}
    raw_preds = [by_id[e.id] for e in test_exs]
    preds = [strip_think(p) for p in raw_preds] if b.think else raw_preds
    refs = [e.output for e in test_exs]
    scores = score_examples(preds, refs, bertscore=exp.bertscore)
    np.savez(out / "scores.npz", ids=np.array([e.id for e in test_exs]), rouge1=scores.rouge1, rougeL=scores.rougeL,
             meteor=scores.meteor, bleu_stats=scores.bleu_stats,
             **({"bertscore": scores.bertscore} if scores.bertscore is not None else {}))
    # by position without BERTScore (re-encoding every segment costs more than the whole cell's scoring)
    metrics = metrics_from_scores(replace(scores, bertscore=None), preds, refs, bootstrap=0)
    metrics.update(summarize(scores, bootstrap=exp.bootstrap, seed=seed))
    metrics.pop("by_user", None)
    metrics.update(nll, name=group.name, method=group.method, split=split, seed=seed, train_s=train_s,
                   decode_ms_per_step=stats.ms_per_step or None,
                   mean_words=float(np.mean([len(p.split()) for p in preds])),
                   think_closed=(float(np.mean(["</think>" in p for p in raw_preds])) if b.think else None))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    cell_latents(exp, group, split, seed)
    log(f"[{split}/{group.name}/seed{seed}] " + " ".join(
        f"{k}={metrics[k]:.4g}" for k in ("rougeL", "meteor", "bleu", "test_nll") if metrics.get(k) is not None))
    return out


# --- the whole matrix ---------------------------------------------------------------------------


def run_experiment(exp: ExperimentConfig, only: list[str] | None = None, log=print) -> Path:
    """Pre-train the bases, run every unfinished cell, write the report; returns OUT/results.md.

    >>> run_experiment(load_experiment("src/flythinker/configs/experiment_tiny.yaml"))  # doctest: +SKIP
    """
    from flythinker.pretrain import PretrainConfig, pretrain_bases

    import logging

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # one DEBUG line per query otherwise
    out = Path(exp.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(asdict(exp), indent=2) + "\n")
    bases = pretrain_bases({k: PretrainConfig(**v) for k, v in exp.bases.items()}, exp.corpus, out / "bases", log=log)
    cells = exp.cells(only)
    for i, (group, split, seed) in enumerate(cells, 1):
        done = (cell_dir(exp, group, split, seed) / "metrics.json").is_file()
        log(f"cell {i}/{len(cells)}: {split}/{group.name}/seed{seed}" + (" (done, skipped)" if done else ""))
        run_cell(exp, group, split, seed, bases, log=log)
    from flythinker.experiment_report import write_report

    return write_report(exp)


def experiment_command(
    config: Path = typer.Argument(..., help="Experiment YAML (e.g. src/flythinker/configs/experiment_gitcommits.yaml)."),
    overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE override, e.g. --set seeds=[0]."),
    only: str = typer.Option("", "--only", help="Comma-separated row names to run (default: all)."),
    report_only: bool = typer.Option(False, "--report-only", help="Only rewrite the report from finished cells."),
) -> None:
    """Run the baselines × splits × seeds matrix (resumable) and write BENCHMARKS-ready tables."""
    exp = load_experiment(config, overrides)
    names = [n.strip() for n in only.split(",") if n.strip()] or None
    if names:
        unknown = set(names) - {g.name for g in exp.groups()}
        if unknown:
            raise UserError(f"--only: unknown row(s) {sorted(unknown)}")
    if report_only:
        from flythinker.experiment_report import write_report

        path = write_report(exp)
    else:
        path = run_experiment(exp, names)
    print(f"report: {path}")
