"""Where a Reasoner's latent direction lives, before and after fine-tuning: the shares of z/‖z‖ that
are the same at every position, constant within an example, and changing along the response
(`flythinker.evaluate.diagnostics.LatentShares`; R's passes only, no Generator).

    python scripts/latent_shares.py --model $(flythinker models pull smollm2-135m-instruct) \\
        --data ../shared/data/gitcommits/user_based --split test --json results/latent_shares/base_user_based_test.json

``--model`` is a FlyThinker folder (its Reasoner) or a plain causal-LM folder (the untrained
pair G = R = that model: what the fused latent is at step 0 of fine-tuning). The prompt is the
SmolLM2 experiment's (2 most recent profile items, ≤ 256 / 64 / 256 tokens). ``--into`` also
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
    from flythinker.auto import load_model
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig
    from flythinker.evaluate.diagnostics import latent_shares
    from flythinker.model import FlyThinker

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="first N examples (0: all)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--into", type=Path, help="a cell's latents.json to add the result to")
    args = ap.parse_args()

    model, tok = load_model(args.model)
    if model.lam == 0.0:  # a plain folder: G = R = the model, R's latents as they are before training
        model = FlyThinker(model.generator, model.generator, lam=0.05, generator_tokenizer=tok, reasoner_tokenizer=tok)
    exs = load_examples(args.data, split=args.split, limit=args.limit or None)
    cfg = PromptConfig(retrieval="recent", k=2, profile_tokens=256, query_tokens=64, target_tokens=256)
    t0 = time.perf_counter()
    shares = latent_shares(model, tok, exs, cfg)
    result = {"model": str(args.model), "data": str(args.data), "split": args.split, "n": len(exs),
              "prompt": vars(cfg), "latent_shares": shares, "seconds": time.perf_counter() - t0}
    print(json.dumps(shares, indent=2))
    print(f"wrote {write_json(result, args.json)}")
    if args.into is not None:
        cell = json.loads(args.into.read_text())
        cell["latent_shares"] = shares
        print(f"wrote {write_json(cell, args.into)}")


if __name__ == "__main__":
    main()
