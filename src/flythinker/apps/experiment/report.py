"""The report of ``flythinker experiment``: ``OUT/results.md`` (methods × metrics × splits with
bootstrap CIs, paired comparisons, ROUGE-L by position, latent diagnostics), ``OUT/results.json``,
``OUT/results.png`` (the rows) and ``OUT/results_paired.png`` (the paired differences), written
from the finished cells (``--report-only`` rewrites them)."""

from __future__ import annotations

import json
from pathlib import Path

from flythinker.apps.experiment.config import ExperimentConfig, cell_dir
from flythinker.errors import UserError
from flythinker.evaluate.report import METRIC_LABELS, fmt_metric


def pooled_scores(folders: list[Path]):
    """One ExampleScores over seeds: per-example means (ROUGE, METEOR, BERTScore) and summed BLEU
    statistics (corpus BLEU of all seeds' outputs); the bootstrap then resamples test examples."""
    import numpy as np

    from flythinker.evaluate.metrics import ExampleScores

    runs = [np.load(f / "scores.npz") for f in folders]
    ids = runs[0]["ids"]
    if any(not np.array_equal(r["ids"], ids) for r in runs):
        raise UserError(f"cells {folders} scored different test examples; rerun them with the same limit_eval")
    mean = lambda k: np.mean([r[k] for r in runs], axis=0) if all(k in r for r in runs) else None  # noqa: E731
    return ExampleScores(mean("rouge1"), mean("rougeL"), mean("meteor"), np.sum([r["bleu_stats"] for r in runs], axis=0),
                         mean("bertscore"))


def collect(exp: ExperimentConfig) -> dict:
    """Finished cells grouped by split and row: folders, per-seed metrics, pooled scores."""
    table: dict = {}
    for g in exp.groups():
        for split in g.splits or exp.splits:
            folders = [cell_dir(exp, g, split, s) for s in (g.seeds or exp.seeds)]
            folders = [f for f in folders if (f / "metrics.json").is_file()]
            if folders:
                table.setdefault(split, {})[g.name] = {
                    "folders": folders, "metrics": [json.loads((f / "metrics.json").read_text()) for f in folders],
                    "scores": pooled_scores(folders)}
    return table


def matched_scores(row_a: dict, row_b: dict):
    """The two rows' pooled scores over the seeds both have (a seed fixes the data order and the
    sampling seed, so a paired comparison pairs seeds too), and those seeds; every seed of each
    where they share none (e.g. a one-seed row against another one-seed row of another seed)."""
    fa, fb = _seed_folders(row_a), _seed_folders(row_b)
    common = sorted(set(fa) & set(fb))
    if not common:
        return row_a["scores"], row_b["scores"], []
    if len(common) == len(fa) == len(fb):
        return row_a["scores"], row_b["scores"], common
    return pooled_scores([fa[s] for s in common]), pooled_scores([fb[s] for s in common]), common


def _seed_folders(row: dict) -> dict[int, Path]:
    return {m["seed"]: f for m, f in zip(row["metrics"], row["folders"])}


def seed_table(split: str, rows: dict, exp: ExperimentConfig, summary: dict) -> list[str]:
    """Markdown lines: what the pooled bootstrap over test examples cannot show, where rows have
    2 or more seeds. Each compared pair seed by seed (does the sign hold on every seed?) and then
    over seeds: the mean of the per-seed differences with a Student-t 95% CI that takes the seed
    (training order, sampling) as the unit, so it counts the spread between trained models that
    the bootstrap over one test set leaves out (the paired table carries it too). Both are read
    from ``summary``, which :func:`paired_tables` filled. Then each row's later seeds against its
    first: one method against itself, the spread that chance alone gives. Per seed: paired
    bootstrap over test examples; * where the 95% CI excludes 0."""
    from flythinker.evaluate.metrics import METRICS, compare_scores

    def row_cells(c: dict) -> list[str]:
        return [f"{c[m]['diff']:+.4f}" + (f" [{_fmt(m, c[m]['ci']['low'])}, {_fmt(m, c[m]['ci']['high'])}]"
                                         + ("*" if ci_side(c[m]["ci"]) else "") if c[m]["ci"] else "")
                if m in c else "–" for m in METRICS]

    lines = []
    for a, b in exp.compare:
        c = summary.get(f"{a}-vs-{b}", {})
        if "per_seed" in c:
            per_seed = [{m: r for m, r in p.items() if m != "seed"} for p in c["per_seed"]]
            lines += [f"| {a} − {b} | seed {p['seed']} | " + " | ".join(row_cells(r)) + " |"
                      for p, r in zip(c["per_seed"], per_seed)]
            over = {m: r for m, r in c["over_seeds"].items() if m != "seeds"}
            lines.append(f"| {a} − {b} | mean of {len(per_seed)} seeds, t over seeds | " + " | ".join(row_cells(over)) + " |")
    for name, row in rows.items():
        f = _seed_folders(row)
        first, *later = sorted(f)
        lines += [f"| {name} − {name} | seed {s} − seed {first} | " + " | ".join(row_cells(compare_scores(
            pooled_scores([f[s]]), pooled_scores([f[first]]), bootstrap=exp.bootstrap, seed=0)["metrics"])) + " |"
                  for s in later]
    if not lines:
        return []
    return [f"Seed by seed ({split}; per seed a paired bootstrap over test examples; \"t over seeds\": the mean of the "
            "per-seed differences with a Student-t 95% CI over seeds; * where the 95% CI excludes 0). "
            "The t CI counts the spread between trained models on this one test set, the paired bootstrap "
            "the spread over test examples: a difference is shown only where both exclude 0. "
            "A row against itself is the spread chance alone gives:", "",
            "| comparison | seeds | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS), *lines, ""]


def over_seeds(per_seed: list[dict]) -> dict:
    """Per metric, the mean of per-seed paired differences and its Student-t 95% CI (n − 1
    degrees of freedom): the seed, not the test example, is the sampled unit.

    >>> r = over_seeds([{"bleu": {"diff": 1.0}}, {"bleu": {"diff": 2.0}}, {"bleu": {"diff": 3.0}}])["bleu"]
    >>> r["diff"], round(r["sd"], 3), [round(x, 3) for x in (r["ci"]["low"], r["ci"]["high"])]
    (2.0, 1.0, [-0.484, 4.484])
    """
    import numpy as np

    from flythinker.extras import require

    require("eval", "scipy", what="the report's intervals over seeds")
    from scipy import stats

    out = {}
    for m in per_seed[0]:
        d = np.array([c[m]["diff"] for c in per_seed if m in c], dtype=float)
        if len(d) < len(per_seed):
            continue
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(d) - 1) * sd / np.sqrt(len(d)))
        out[m] = {"diff": float(d.mean()), "sd": sd, "ci": {"low": float(d.mean()) - half, "high": float(d.mean()) + half}}
    return out


def paired_tables(split: str, rows: dict, exp: ExperimentConfig, summary: dict) -> list[str]:
    """Markdown lines: every configured comparison A − B of finished rows (paired bootstrap on
    the seeds both have; with 2 or more, also the mean of the per-seed differences with its
    Student-t CI over seeds), with a verdict; each result also goes into ``summary``."""
    from flythinker.evaluate.metrics import compare_scores

    lines = []
    for a, b in exp.compare:
        if a not in rows or b not in rows:
            continue
        scores_a, scores_b, seeds = matched_scores(rows[a], rows[b])
        c = compare_scores(scores_a, scores_b, bootstrap=exp.bootstrap, seed=0)
        c["seeds"] = seeds
        per_seed = per_seed_comparisons(rows[a], rows[b], seeds, exp) if len(seeds) >= 2 else None
        over = over_seeds(per_seed) if per_seed else None
        if over is not None:
            c["over_seeds"] = {"seeds": seeds, **over}
            c["per_seed"] = [{"seed": s, **{m: {"diff": r["diff"], "ci": r["ci"]} for m, r in p.items()}}
                             for s, p in zip(seeds, per_seed)]
        summary[f"{a}-vs-{b}"] = c
        on = (f"seeds {', '.join(map(str, seeds))} of each, pooled" if len(seeds) > 1 else f"seed {seeds[0]} of each"
              if seeds else "no seed in common: every seed of each, pooled")
        t_col = " mean over seeds [t 95% CI] |" if over is not None else ""
        lines += [f"Paired bootstrap, {a} − {b} ({split}, {c['n']} test examples, {on}"
                  + ("; a difference is shown only where both intervals exclude 0" if over is not None else "") + "):", "",
                  "| metric | " + a + " | " + b + " | diff [95% CI] |" + t_col + " P(" + a + " > " + b + ") | verdict at 95% |",
                  "|---|---|---|---|" + ("---|" if over is not None else "") + "---|---|"]
        for m, r in c["metrics"].items():
            ci = f" [{_fmt(m, r['ci']['low'])}, {_fmt(m, r['ci']['high'])}]" if r["ci"] else ""
            p = "–" if r["p_a_better"] is None else f"{r['p_a_better']:.3f}"
            o = over.get(m) if over is not None else None
            r["verdict"] = verdict(r, a, b, o)
            t_cell = "" if over is None else (f" {o['diff']:+.4f} [{_fmt(m, o['ci']['low'])}, {_fmt(m, o['ci']['high'])}] |"
                                              if o else " – |")
            lines.append(f"| {METRIC_LABELS[m]} | {_fmt(m, r['a'])} | {_fmt(m, r['b'])} | {r['diff']:+.4f}{ci} |{t_cell} {p} "
                         f"| {r['verdict']} |")
        lines.append("")
    return lines


def per_seed_comparisons(row_a: dict, row_b: dict, seeds: list[int], exp: ExperimentConfig) -> list[dict]:
    """``compare_scores(...)["metrics"]`` of A's cell against B's, one per seed."""
    from flythinker.evaluate.metrics import compare_scores

    fa, fb = _seed_folders(row_a), _seed_folders(row_b)
    return [compare_scores(pooled_scores([fa[s]]), pooled_scores([fb[s]]), bootstrap=exp.bootstrap, seed=0)["metrics"]
            for s in seeds]


def nll_per_seed_table(split: str, rows: dict) -> list[str]:
    """Markdown lines: test / dev NLL of every finished seed of every row that has them."""
    seeds = sorted({m["seed"] for row in rows.values() for m in row["metrics"] if m.get("test_nll") is not None})
    if not seeds:
        return []
    lines = [f"Teacher-forced NLL per seed ({split}; test / dev, nats per reference token):", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name, row in rows.items():
        by_seed = {m["seed"]: m for m in row["metrics"] if m.get("test_nll") is not None}
        if by_seed:
            lines.append(f"| {name} | " + " | ".join(
                f"{by_seed[s]['test_nll']:.3f} / {by_seed[s]['dev_nll']:.3f}" if s in by_seed else "–" for s in seeds) + " |")
    return lines + [""]


def verdict(row: dict, a: str, b: str, over: dict | None = None) -> str:
    """What a paired row's 95% CI says (every metric here is higher-is-better); with ``over``
    (the t CI over seeds), a difference is shown only where both intervals exclude 0 on the
    same side.

    >>> verdict({"ci": {"low": 0.01, "high": 0.2}}, "flythinker", "sft")
    'flythinker better'
    >>> verdict({"ci": {"low": -0.01, "high": 0.2}}, "flythinker", "sft")
    'no difference shown'
    >>> verdict({"ci": {"low": 0.01, "high": 0.2}}, "flythinker", "sft", {"ci": {"low": -0.3, "high": 0.5}})
    'not shown over seeds'
    """
    if not row.get("ci"):
        return "–"
    here = ci_side(row["ci"])
    if over is not None and here and ci_side(over["ci"]) != here:
        return "not shown over seeds"
    return {1: f"{a} better", -1: f"{b} better", 0: "no difference shown"}[here]


def ci_side(ci: dict) -> int:
    """+1 where a 95% CI of a difference lies above 0, −1 where below, 0 where it holds 0."""
    return 1 if ci["low"] > 0 else -1 if ci["high"] < 0 else 0


def _fmt(metric: str, x: float | None) -> str:
    return fmt_metric(metric, x, bleu_digits=3)  # BLEU (0-100) with 3 decimals in these tables


def write_report(exp: ExperimentConfig) -> Path:
    """``OUT/results.md`` (tables), ``OUT/results.json`` and ``OUT/results.png`` from finished cells."""
    import numpy as np

    from flythinker.evaluate.metrics import METRICS, summarize

    out, table, summary = Path(exp.out), collect(exp), {}
    lines = ["# Results", "", f"Config: `{exp.out}/experiment.json`. Point estimates pool the seeds (per-example means; "
             "BLEU is corpus BLEU over all seeds' outputs); [95% CI] from a bootstrap over test examples; "
             "NLL = teacher-forced nats per reference token, mean ± sd over seeds.", ""]
    for split, rows in table.items():
        summary[split] = {}
        lines += [f"## {split}", "", "| method | seeds | " + " | ".join(METRIC_LABELS[m] for m in METRICS)
                  + " | test NLL | dev NLL | words |", "|---|---|" + "---|" * (len(METRICS) + 3)]
        for name, row in rows.items():
            s = summarize(row["scores"], bootstrap=exp.bootstrap, seed=0)
            nll = {k: [m[k] for m in row["metrics"] if m.get(k) is not None] for k in ("test_nll", "dev_nll")}
            summary[split][name] = {**{m: s[m] for m in METRICS}, "ci": s["ci"], "seeds": len(row["folders"]),
                                    **{k: (float(np.mean(v)) if v else None) for k, v in nll.items()},
                                    "per_seed": [{m: r.get(m) for m in (*METRICS, "test_nll", "dev_nll")} for r in row["metrics"]],
                                    "by_position": {p: float(np.mean([r["by_position"][p]["rougeL"] for r in row["metrics"]
                                                                      if r["by_position"].get(p, {}).get("rougeL") is not None] or [np.nan]))
                                                    for p in row["metrics"][0].get("by_position", {})}}
            cells = [_fmt(m, s[m]) + (f" [{_fmt(m, s['ci'][m]['low'])}, {_fmt(m, s['ci'][m]['high'])}]" if m in s["ci"] else "")
                     for m in METRICS]
            nll_txt = [f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "–" for v in nll.values()]
            words = np.mean([r["mean_words"] for r in row["metrics"]])
            lines.append(f"| {name} | {len(row['folders'])} | " + " | ".join(cells + nll_txt) + f" | {words:.0f} |")
        lines.append("")
        lines += paired_tables(split, rows, exp, summary[split])
        lines += seed_table(split, rows, exp, summary[split]) + nll_per_seed_table(split, rows)
        pos = {n: summary[split][n]["by_position"] for n in rows}
        segs = sorted({p for v in pos.values() for p in v}, key=lambda p: int(p.split("-")[0].rstrip("+")))
        if segs:
            lines += [f"ROUGE-L by position in the response ({split}; words of the reference, seed mean):", "",
                      "| method | " + " | ".join(segs) + " |", "|---|" + "---|" * len(segs)]
            lines += [f"| {n} | " + " | ".join(_fmt("rougeL", pos[n].get(p)) for p in segs) + " |" for n in rows]
            lines.append("")
    lines += latent_table(exp)
    lines += probe_table(exp)
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    if summary:
        plot_results(summary, out / "results.png")
        plot_paired(summary, out / "results_paired.png")
    return out / "results.md"


def latent_table(exp: ExperimentConfig) -> list[str]:
    """Markdown rows of :func:`latent_diagnostics` for every finished G + R cell (seed means)."""
    import numpy as np

    from flythinker.apps.experiment.cells import cell_latents

    keys = ("lam", "rho", "offset_norm", "token_embedding_norm", "consecutive_cos", "nll_own", "nll_no_latent",
            "nll_other_latent")
    rows, share_rows = [], []
    for split in exp.splits:
        for g in exp.groups():
            found = [d for s in (g.seeds or exp.seeds) if split in (g.splits or exp.splits)
                     and (d := cell_latents(exp, g, split, s)) is not None]
            if found:
                rows.append(f"| {split} | {g.name} | {len(found)} | "
                            + " | ".join(f"{np.mean([d[k] for d in found]):.3f}" for k in keys) + " |")
            shares = [d["latent_shares"] for d in found if (d.get("latent_shares") or {}).get("constant") is not None]
            if shares:
                share_rows.append(f"| {split} | {g.name} | {len(shares)} | " + " | ".join(
                    f"{round(np.mean([x[k] for x in shares]), 3) + 0.0:.3f}"  # + 0.0: no "-0.000" from rounding error
                    for k in ("constant", "example", "position")) + " |")
    if not rows:
        return []
    lines = ["## Do the latents matter? (test split, teacher forcing, seed means)", "",
             "| split | row | seeds | λ | ρ | λρ (offset norm) | mean ‖E_G(s)‖ | cos(z_i-1, z_i) | NLL own latents "
             "| NLL no latent (λ=0) | NLL other example's latents |", "|---|---|---|" + "---|" * len(keys), *rows, ""]
    if share_rows:
        lines += ["Where the fused latent's direction z/‖z‖ lives (shares of its squared norm over the response "
                  "positions; `flythinker.evaluate.diagnostics.LatentShares`): the same at every position (a constant "
                  "offset), constant within an example, changing along the response.", "",
                  "| split | row | cells | constant | per example | along the response |", "|---|---|---|---|---|---|",
                  *share_rows, ""]
    return lines


def probe_table(exp: ExperimentConfig) -> list[str]:
    """Markdown rows of every cell's ``probe.json`` (seed means): does fine-tuning keep, lose or
    grow the model's use of the profile?"""
    import numpy as np

    rows = []
    for split in exp.splits:
        for g in exp.groups():
            found = [json.loads(p.read_text()) for s in (g.seeds or exp.seeds) if split in (g.splits or exp.splits)
                     and (p := cell_dir(exp, g, split, s) / "probe.json").is_file()]
            if found:
                nll = {k: np.mean([d["nll"][k] for d in found]) for k in ("own", "none", "other") if k in found[0]["nll"]}
                win = np.mean([d["paired"]["own-none"]["win_rate"] for d in found])
                rows.append(f"| {split} | {g.name} | {len(found)} | " + " | ".join(f"{v:.3f}" for v in nll.values())
                            + f" | {nll['own'] - nll['none']:+.3f} | {win:.0%} |")
    if not rows:
        return []
    return ["## Profile use (test split, teacher forcing, seed means)", "",
            "| split | row | seeds | NLL own profile | NLL no profile | NLL another user's | own − none | own wins |",
            "|---|---|---|---|---|---|---|---|", *rows, ""]


def plot_results(summary: dict, path: Path) -> None:
    """Bars per method (with bootstrap CIs), one panel per split × metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(summary)
    fig, axes = plt.subplots(len(splits), len(METRIC_LABELS), figsize=(3.2 * len(METRIC_LABELS), 2.8 * len(splits)),
                             squeeze=False)
    for i, split in enumerate(splits):
        rows = {n: r for n, r in summary[split].items() if "ci" in r and "metrics" not in r}
        for j, (m, label) in enumerate(METRIC_LABELS.items()):
            ax, names = axes[i][j], [n for n in rows if rows[n].get(m) is not None]
            vals = [rows[n][m] for n in names]
            err = [[v - rows[n]["ci"].get(m, {}).get("low", v) for n, v in zip(names, vals)],
                   [rows[n]["ci"].get(m, {}).get("high", v) - v for n, v in zip(names, vals)]]
            ax.bar(range(len(names)), vals, yerr=err, capsize=2,
                   color=["tab:red" if n == "flythinker" else "tab:blue" if n == "sft" else "tab:gray" for n in names])
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{split}: {label}", fontsize=9)
            if vals:
                lo = min(v - e for v, e in zip(vals, err[0]))
                ax.set_ylim(max(0.0, lo - 0.1 * abs(lo)), None)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_paired(summary: dict, path: Path) -> bool:
    """A forest plot of every paired comparison A − B, one panel per split × metric: each seed's
    difference with its bootstrap CI over test examples (grey), the pooled one (black) and, with 2
    or more seeds, the mean over seeds with its t CI (red); a difference is shown where black and
    red both clear the line at 0. False (nothing drawn) where no comparison has finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    splits = [s for s in summary if any("-vs-" in k for k in summary[s])]
    if not splits:
        return False
    fig, axes = plt.subplots(len(splits), len(METRIC_LABELS), figsize=(3.2 * len(METRIC_LABELS), 0.9 + 0.55 * max(
        sum("-vs-" in k for k in summary[s]) for s in splits) * len(splits) + 0.6 * len(splits)), squeeze=False)
    for i, split in enumerate(splits):
        pairs = [(k.replace("-vs-", " − "), c) for k, c in summary[split].items() if "-vs-" in k]
        for j, (m, label) in enumerate(METRIC_LABELS.items()):
            ax = axes[i][j]
            for y, (_, c) in enumerate(pairs):
                marks = [(c.get("metrics", {}).get(m), 0.0, "black", "o")]
                if m in c.get("over_seeds", {}):
                    marks.append((c["over_seeds"][m], -0.22, "tab:red", "D"))
                seeds = c.get("per_seed") or []
                marks += [(ps.get(m), 0.12 + 0.22 * k / max(len(seeds), 1), "tab:gray", ".") for k, ps in enumerate(seeds)]
                for r, dy, color, marker in marks:
                    if not r or not r.get("ci"):
                        continue
                    ax.errorbar(r["diff"], y + dy, xerr=[[r["diff"] - r["ci"]["low"]], [r["ci"]["high"] - r["diff"]]],
                                fmt=marker, color=color, markersize=4, capsize=2, linewidth=1)
            ax.axvline(0.0, color="black", linewidth=0.6, linestyle=":")
            ax.set_yticks(range(len(pairs)), [n for n, _ in pairs] if j == 0 else [""] * len(pairs), fontsize=7)
            ax.set_ylim(len(pairs) - 0.5, -0.5)
            ax.tick_params(axis="x", labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.set_title(f"{split}: {label}", fontsize=9)
    fig.suptitle("paired differences A − B: per seed (grey), pooled bootstrap (black), mean over seeds with t CI (red)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
