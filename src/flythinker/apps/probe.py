"""`flythinker probe`: can this model be personalized at all? The profile-use probe.

Teacher-forced NLL of real references with the user's own profile in the prompt, with none, and
with another user's; paired differences with bootstrap CIs and win rates. A base model whose NLL
does not drop with its user's own profile gives FlyThinker's Reasoner nothing to build on.

    flythinker probe --model $(flythinker models pull smollm2-135m-instruct) \\
        --data ../shared/data/gitcommits/user_based --split test --limit 40
"""

from __future__ import annotations

import random
from pathlib import Path

import typer

from flythinker.apps import write_json
from flythinker.choices import Dtype, value
from flythinker.errors import UserError

# a model with no training config (a plain base): its user's 2 most recent items, short budgets
PROBE_DEFAULTS = {"retrieval": "recent", "k": 2, "profile_tokens": 256, "query_tokens": 64, "target_tokens": 128}


def run_probe(
    model_dir: Path,
    data: Path,
    split: str = "test",
    limit: int = 40,
    k: int | None = None,
    seed: int = 0,
    bootstrap: int = 1000,
    batch_size: int = 8,
    prompt: dict | None = None,
    dtype: str | None = None,
    device=None,
    say=None,
    latents: bool = False,
) -> dict:
    """The probe's result (``flythinker.evaluate.diagnostics.profile_use``) for a model folder;
    ``latents``: also ``latent_diagnostics`` (own / no / another example's latents) for G + R.

    Prompts as the model was trained (its run's ``config.yaml``), else :data:`PROBE_DEFAULTS`;
    ``k`` and ``prompt`` override either."""
    from flythinker.auto import load_model
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompt_settings import describe_prompt_config, model_prompt_config
    from flythinker.devices import pick_device
    from flythinker.evaluate.diagnostics import latent_diagnostics, profile_use
    from flythinker.model import FlyThinker

    examples = load_examples(data, split=split)
    if len(examples) < 2:
        raise UserError(
            f"--data {data}: split {split!r} has {len(examples)} example(s); the probe needs two users or more"
        )
    if limit and limit < len(examples):  # a seeded random subset, not the file's first rows
        examples = [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), limit))]
    cfg, source = model_prompt_config(model_dir, default=PROBE_DEFAULTS, overrides={"k": k, **(prompt or {})})
    if say is not None:
        say(f"prompts: {describe_prompt_config(cfg)}; from {source}")
    model, tok = load_model(model_dir, dtype=dtype, device=pick_device(device))
    result = profile_use(model, tok, examples, cfg, bootstrap=bootstrap, seed=seed, batch_size=batch_size)
    out = {"model": str(model_dir), "data": str(data), "split": split, "prompt": vars(cfg), **result}
    if latents and isinstance(model, FlyThinker) and model.lam != 0.0:  # own-profile NLL = own-latent NLL
        out["latents"] = latent_diagnostics(model, tok, examples, cfg, batch_size, nll_own=result["nll"]["own"])
    elif latents and say is not None:
        say("--latents: G alone (or λ = 0), no Reasoner latents to measure")
    return out


def format_probe(result: dict) -> str:
    """Markdown: NLL per condition, then own − none and own − other with CIs and win rates."""
    nll = result["nll"]
    lines = [
        f"Profile-use probe: {result['n']} examples ({result['tokens']} reference tokens), teacher-forced "
        "NLL in nats per token",
        "",
        "| profile in the prompt | NLL |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:.3f} |" for name, value in nll.items()]
    lines += ["", "| paired | difference | 95% CI | own wins |", "|---|---:|---:|---:|"]
    for name, row in result["paired"].items():
        ci = f"[{row['ci']['low']:+.3f}, {row['ci']['high']:+.3f}]" if "ci" in row else "–"
        lines.append(f"| {name} | {row['diff']:+.3f} | {ci} | {row['win_rate']:.0%} |")
    if "latents" in result:
        d = result["latents"]
        lines += ["", "| Reasoner latents | NLL |", "|---|---:|", f"| own | {d['nll_own']:.3f} |"]
        lines += [
            f"| none (λ = 0) | {d['nll_no_latent']:.3f} |",
            f"| another example's | {d['nll_other_latent']:.3f} |",
        ]
        lines.append(
            f"\nlatent offset of norm {d['offset_norm']:.3f} added to token embeddings of norm "
            f"{d['token_embedding_norm']:.3f}"
        )
    return "\n".join(lines)


def probe_command(
    model: Path = typer.Option(..., "--model", help="A FlyThinker folder or a plain causal-LM folder."),
    data: Path = typer.Option(..., "--data", help="LongLaMP-format file or folder."),
    split: str = typer.Option("test", "--split", help="Split to probe when --data is a folder."),
    limit: int = typer.Option(40, "--limit", help="A seeded random subset of N examples (0 = all)."),
    k: int = typer.Option(None, "--k", help="Profile items in the prompt (default: as trained, else 2)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset, the other-user pairing and the bootstrap."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the CIs (0: none)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per forward pass."),
    dtype: Dtype = typer.Option(None, "--dtype", help="Model dtype."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU when there is one)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result (with per-example NLLs) here."),
    latents: bool = typer.Option(
        False, "--latents", help="G + R: also the NLL with own / no / another example's Reasoner latents."
    ),
) -> None:
    """Does the model read the profile? NLL with own / no / another user's profile, paired, with CIs."""
    from flythinker.devices import use_device

    if limit < 0 or (k is not None and k < 1) or bootstrap < 0 or batch_size < 1:
        raise UserError("--limit and --bootstrap must be ≥ 0, --k and --batch-size ≥ 1")
    device = use_device(device)
    result = run_probe(
        model,
        data,
        split,
        limit,
        k,
        seed,
        bootstrap,
        batch_size,
        dtype=value(dtype),
        device=device,
        say=print,
        latents=latents,
    )
    print(format_probe(result))
    if json_path is not None:
        print(f"wrote {write_json(result, json_path)}")
