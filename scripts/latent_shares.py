"""Where a Reasoner's latent direction lives, before and after fine-tuning: the shares of z/‖z‖ that
are the same at every position, constant within an example, and changing along the response
(`flythinker.evaluate.diagnostics.LatentShares`; R's passes only, no Generator).

    python scripts/latent_shares.py --model $(flythinker models pull smollm2-135m-instruct) \\
        --data ../shared/data/gitcommits/user_based --split test --json results/latent_shares/base_user_based_test.json

``--model`` is a FlyThinker folder (its Reasoner) or a plain causal-LM folder (the untrained
pair G = R = that model: what the fused latent is at step 0 of fine-tuning). The prompt is that of
a row of an experiment config (``--experiment``, ``--row``; by default the SmolLM2 experiment's
``flythinker`` row: 2 most recent profile items, ≤ 256 / 64 / 256 tokens). ``--into`` also
adds the result to a cell's ``latents.json`` as ``latent_shares``, for a cell finished before
the experiment measured it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from flythinker.apps import write_json
    from flythinker.apps.experiment.cells import cell_train_config
    from flythinker.apps.experiment.config import load_experiment
    from flythinker.auto import load_model
    from flythinker.data.longlamp import load_examples
    from flythinker.evaluate.diagnostics import latent_shares
    from flythinker.model import FlyThinker

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="first N examples (0: all)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--into", type=Path, help="a cell's latents.json to add the result to")
    ap.add_argument(
        "--experiment",
        type=Path,
        default=Path("src/flythinker/configs/experiment_gitcommits_smollm2.yaml"),
        help="the experiment config whose prompt settings to use",
    )
    ap.add_argument("--row", default="flythinker", help="the row of that experiment whose prompt to use")
    args = ap.parse_args()

    exp = load_experiment(args.experiment)
    group = next((g for g in exp.groups() if g.name == args.row), None)
    if group is None:
        ap.error(f"--row: {args.row!r} is not a row of {args.experiment} ({', '.join(g.name for g in exp.groups())})")
    split = (group.splits or exp.splits)[0]  # the prompt settings do not depend on the split
    cfg = cell_train_config(exp, group, split, 0, {k: Path(k) for k in exp.bases}).data.prompt_config()

    model, tok = load_model(args.model)
    if model.lam == 0.0:  # a plain folder: G = R = the model, R's latents as they are before training
        model = FlyThinker(model.generator, model.generator, lam=0.05, generator_tokenizer=tok, reasoner_tokenizer=tok)
    exs = load_examples(args.data, split=args.split, limit=args.limit or None)
    t0 = time.perf_counter()
    shares = latent_shares(model, tok, exs, cfg)
    result = {
        "model": str(args.model),
        "data": str(args.data),
        "split": args.split,
        "n": len(exs),
        "experiment": str(args.experiment),
        "row": args.row,
        "prompt": vars(cfg),
        "latent_shares": shares,
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(shares, indent=2))
    print(f"wrote {write_json(result, args.json)}")
    if args.into is not None:
        cell = json.loads(args.into.read_text())
        cell["latent_shares"] = shares
        print(f"wrote {write_json(cell, args.into)}")


if __name__ == "__main__":
    main()
