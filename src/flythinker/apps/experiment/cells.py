"""One cell of the experiment: fine-tune a method on a split with a seed, generate the test split,
score it, measure NLL and latent diagnostics; a cell with ``metrics.json`` is finished."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

from flythinker.apps.experiment.config import CellGroup, ExperimentConfig, cell_dir
from flythinker.apps.experiment.methods import get_baseline, strip_think, with_reasoning
from flythinker.auto import load_model
from flythinker.devices import pick_device
from flythinker.errors import UserError
from flythinker.evaluate.nll import mean_nll, per_example_nll

PROBE_BATCH = 8  # examples per teacher-forced pass of the test split (the probe's own-profile pass is the test NLL)


def _trained(exp: ExperimentConfig, out: Path) -> Path:
    """The cell's trained model: ``train/final``, or ``train/best`` (lowest dev NLL) when the
    experiment says ``checkpoint: best``."""
    return out / "train" / exp.checkpoint


def _load(path):
    """A trained (or base) model of a cell on the run's device (the GPU when there is one)."""
    return load_model(path, device=pick_device())


def cell_train_config(exp: ExperimentConfig, group: CellGroup, split: str, seed: int, bases: dict[str, Path]):
    """The TrainConfig of one cell: the shared recipe + the method's settings + the row's overrides."""
    from flythinker.train.config import TrainConfig, apply_overrides, from_dict

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
    # checkpoint "best": the dev NLL after every epoch picks the model (the cell's dev examples)
    t.update(seed=seed, eval=exp.checkpoint == "best", resume=True, overwrite=False)
    if exp.checkpoint == "best" and exp.limit_eval:
        data["limit_dev"] = exp.limit_eval
    raw = apply_overrides(raw, list(group.set))
    return from_dict(TrainConfig, raw)


def build_cell_model(cfg, method: str, tokenizer):
    """G alone (sft-style methods), a FlyThinker or a StaticThinker, from the base folders."""
    from flythinker.model import FlyThinker
    from flythinker.separate import SeparatePromptThinker
    from flythinker.static import StaticThinker
    from flythinker.train.assemble import load_causal_lm

    kind = get_baseline(method).model
    separate = cfg.data.prompt_config().profile_in == "reasoner"  # R reads its own prompt (profile + query)
    if separate and kind == "static":
        raise UserError(
            f"method {method!r}: a static latent is read from G's prompt; data.prompt.profile_in=reasoner needs flythinker"
        )
    g = load_causal_lm(cfg.model.generator, "model.generator")
    if kind == "sft":
        return g
    r = load_causal_lm(cfg.model.reasoner, "model.reasoner")
    cls = SeparatePromptThinker if separate else StaticThinker if kind == "static" else FlyThinker
    return cls(
        g,
        r,
        lam=cfg.model.lam,
        fusion=cfg.model.fusion,
        generator_tokenizer=tokenizer,
        reasoner_tokenizer=tokenizer,
        gate=cfg.model.gate,
    )


def cell_latents(exp: ExperimentConfig, group: CellGroup, split: str, seed: int, loaded=None) -> dict | None:
    """:func:`latent_diagnostics` of a finished G + R cell (``flythinker``, ``static``) on its test
    split (cached in ``latents.json``); None for G-alone methods or unfinished cells. ``loaded`` is the cell's
    ``(model, tokenizer)`` if the caller has them; the own-latent NLL is the cell's test NLL."""
    out = cell_dir(exp, group, split, seed)
    if get_baseline(group.method).model == "sft":
        return None
    if (out / "latents.json").is_file():  # also on a machine that has only the committed results
        return json.loads((out / "latents.json").read_text())
    if not _trained(exp, out).is_dir():
        return None
    from flythinker.data.longlamp import load_examples
    from flythinker.evaluate.diagnostics import latent_diagnostics

    model, tok = loaded if loaded is not None else _load(_trained(exp, out))
    exs = load_examples(Path(exp.data) / split, split="test", limit=exp.limit_eval)
    prompt_cfg = cell_train_config(exp, group, split, seed, {k: Path(k) for k in exp.bases}).data.prompt_config()
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    result = latent_diagnostics(model, tok, exs, prompt_cfg, nll_own=metrics.get("test_nll"))
    (out / "latents.json").write_text(json.dumps(result, indent=2) + "\n")
    return json.loads((out / "latents.json").read_text())


def run_cell(exp: ExperimentConfig, group: CellGroup, split: str, seed: int, bases: dict[str, Path], log=print) -> Path:
    """Train, predict, score one cell; returns its folder (skips a finished one)."""
    from flythinker.apps.generate import DecodeSettings, generate_predictions
    from flythinker.data.longlamp import load_examples

    out = cell_dir(exp, group, split, seed)
    if (out / "metrics.json").is_file():
        prune_weights(exp, out)  # (a run stopped between a cell's metrics and its pruning)
        return out
    out.mkdir(parents=True, exist_ok=True)
    b = get_baseline(group.method)
    cfg = cell_train_config(exp, group, split, seed, bases)
    prompt_cfg = cfg.data.prompt_config()
    folder = Path(exp.data) / split
    train_exs = load_examples(folder, split="train", limit=exp.limit_train)
    dev_exs = load_examples(folder, split="dev", limit=exp.limit_eval)
    test_exs = load_examples(folder, split="test", limit=exp.limit_eval)
    t0 = time.perf_counter()
    if group.zero_shot:  # the base as it is: nothing trained
        train_s, (model, tok) = 0.0, _load(bases[exp.generator])
    else:
        train_s = _train_cell(cfg, group, [with_reasoning(e) for e in train_exs] if b.think else train_exs, out)
        model, tok = _load(_trained(exp, out))
    nll, test_nll = _nll(model, tok, dev_exs, test_exs, prompt_cfg, think=b.think)
    settings = DecodeSettings(**{**exp.decode, "seed": 1000 * seed})
    if b.think:
        settings.max_new_tokens += exp.think_extra_tokens
    stats = generate_predictions(
        model, tok, test_exs, out / "predictions.jsonl", prompt_cfg=prompt_cfg, settings=settings, progress=False
    )
    metrics = score_cell(exp, out, test_exs, think=b.think, seed=seed)
    metrics.update(
        nll,
        name=group.name,
        method=group.method,
        split=split,
        seed=seed,
        train_s=train_s,
        decode_ms_per_step=stats.ms_per_step or None,
        zero_shot=group.zero_shot,
        cell_s=time.perf_counter() - t0,
    )
    if exp.probe:
        _probe(model, tok, test_exs, prompt_cfg, out, exp, seed, own=test_nll)
        metrics["cell_s"] = time.perf_counter() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    cell_latents(exp, group, split, seed, loaded=(model, tok))
    prune_weights(exp, out)
    log(
        f"[{split}/{group.name}/seed{seed}] "
        + " ".join(
            f"{k}={metrics[k]:.4g}" for k in ("rougeL", "meteor", "bleu", "test_nll") if metrics.get(k) is not None
        )
    )
    return out


def prune_weights(exp: ExperimentConfig, out: Path) -> None:
    """Delete what a finished cell no longer needs of its training run (``exp.keep_weights``):
    the resumable checkpoints (optimizer state: twice the weights under full fine-tuning) and the
    model folder it did not decode, or, with "none", the decoded one as well."""
    from flythinker.saving import remove_dir

    if exp.keep_weights == "all":
        return
    run = out / "train"
    drop = ["checkpoints", "final", "best"]
    if exp.keep_weights == "decoded":
        drop.remove(exp.checkpoint)
    for name in drop:
        if (run / name).is_dir():
            remove_dir(run / name)


def remeasure_cell(
    exp: ExperimentConfig, group: CellGroup, split: str, seed: int, bases: dict[str, Path], log=print
) -> None:
    """Measure a finished cell's teacher-forced figures again from its model: dev and test NLL (in
    ``metrics.json``), ``probe.json`` and ``latents.json``. Predictions, scores and timings stay as
    they are: for cells measured by code that has since been fixed (a ``static`` cell's NLL and
    probe once left its latent out). Needs the cell's ``train/final`` (zero-shot: the base)."""
    from flythinker.apps import write_json
    from flythinker.data.longlamp import load_examples

    out = cell_dir(exp, group, split, seed)
    name = f"{split}/{group.name}/seed{seed}"
    if not (out / "metrics.json").is_file():
        raise UserError(f"--remeasure: {name} is not finished (no metrics.json)")
    if not group.zero_shot and not _trained(exp, out).is_dir():
        raise UserError(
            f"--remeasure: {name} has no trained model ({_trained(exp, out)}); "
            "checkpoints are not committed, so only the machine that trained it can measure it again "
            "(and only if it ran with keep_weights: decoded or all)"
        )
    model, tok = _load(bases[exp.generator] if group.zero_shot else _trained(exp, out))
    prompt_cfg = cell_train_config(exp, group, split, seed, bases).data.prompt_config()
    folder = Path(exp.data) / split
    dev_exs = load_examples(folder, split="dev", limit=exp.limit_eval)
    test_exs = load_examples(folder, split="test", limit=exp.limit_eval)
    metrics = json.loads((out / "metrics.json").read_text())
    nll, test_nll = _nll(model, tok, dev_exs, test_exs, prompt_cfg, think=get_baseline(group.method).think)
    if exp.probe:
        _probe(model, tok, test_exs, prompt_cfg, out, exp, seed, own=test_nll)
    before = {k: metrics.get(k) for k in nll}
    metrics.update(nll)
    write_json(metrics, out / "metrics.json")
    (out / "latents.json").unlink(missing_ok=True)
    cell_latents(exp, group, split, seed, loaded=(model, tok))
    log(f"[{name}] remeasured: " + " ".join(f"{k} {before[k]} -> {nll[k]:.4f}" for k in nll))


def _nll(model, tok, dev_exs, test_exs, prompt_cfg, think: bool):
    """({"dev_nll", "test_nll"}, the test split's per-example NLL) of the references (response
    tokens only). A think model is scored on the plan too, so its NLL is not comparable: none.
    The test pass is also the probe's own-profile condition and the latents' own-latent one."""
    if think:
        return {}, None
    test_nll = per_example_nll(model, tok, test_exs, prompt_cfg, PROBE_BATCH)
    return {
        "dev_nll": mean_nll(model, tok, dev_exs, prompt_cfg),
        "test_nll": float(test_nll[0].sum() / max(test_nll[1].sum(), 1)),
    }, test_nll


def _train_cell(cfg, group: CellGroup, train_exs, out: Path) -> float:
    """Fine-tune the cell's model unless ``out/train/final`` exists; returns its training seconds
    (the trainer's own count in ``train/result.json``, summed over resumed runs, so a cell whose
    run stopped after training still reports them; wall time of this call where that is missing)."""
    from flythinker.train.assemble import build_tokenizer
    from flythinker.train.trainer import train

    t0 = time.perf_counter()
    if not (out / "train" / "final").is_dir():
        tok = build_tokenizer(cfg.model, train_exs)
        train(
            cfg, out / "train", model=build_cell_model(cfg, group.method, tok), tokenizer=tok, train_examples=train_exs
        )
    result = out / "train" / "result.json"
    if result.is_file():
        return float(json.loads(result.read_text())["train_time_s"])
    return time.perf_counter() - t0


def score_cell(exp: ExperimentConfig, out: Path, test_exs, think: bool, seed: int) -> dict:
    """Score ``out/predictions.jsonl``: the metrics dict (CIs, by position) and ``out/scores.npz``."""
    import numpy as np

    from flythinker.data.predictions import read_predictions
    from flythinker.evaluate.metrics import metrics_from_scores, score_examples, summarize

    by_id = read_predictions(out / "predictions.jsonl")
    raw_preds = [by_id[e.id] for e in test_exs]
    preds = [strip_think(p) for p in raw_preds] if think else raw_preds
    refs = [e.output for e in test_exs]
    scores = score_examples(preds, refs, bertscore=exp.bertscore)
    np.savez(
        out / "scores.npz",
        ids=np.array([e.id for e in test_exs]),
        rouge1=scores.rouge1,
        rougeL=scores.rougeL,
        meteor=scores.meteor,
        bleu_stats=scores.bleu_stats,
        **({"bertscore": scores.bertscore} if scores.bertscore is not None else {}),
    )
    # by position without BERTScore (re-encoding every segment costs more than the whole cell's scoring)
    metrics = metrics_from_scores(replace(scores, bertscore=None), preds, refs, bootstrap=0)
    metrics.update(summarize(scores, bootstrap=exp.bootstrap, seed=seed))
    metrics.pop("by_user", None)
    metrics.update(
        mean_words=float(np.mean([len(p.split()) for p in preds])),
        think_closed=(float(np.mean(["</think>" in p for p in raw_preds])) if think else None),
    )
    return metrics


def _probe(model, tok, test_exs, prompt_cfg, out: Path, exp: ExperimentConfig, seed: int, own=None) -> None:
    """``probe.json``: the profile-use probe of this cell's model, with the experiment's profile
    prompt (a query-only row is probed with the profile the other rows see). ``own``: the test
    split's per-example NLL with the cell's prompt, reused when that is the probe's prompt."""
    from flythinker.evaluate.diagnostics import profile_use

    if prompt_cfg.retrieval == "none":
        prompt_cfg, own = (
            replace(prompt_cfg, retrieval=exp.train.get("data", {}).get("prompt", {}).get("retrieval", "all")),
            None,
        )
    result = profile_use(
        model, tok, test_exs, prompt_cfg, bootstrap=exp.bootstrap, seed=seed, batch_size=PROBE_BATCH, own=own
    )
    (out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
