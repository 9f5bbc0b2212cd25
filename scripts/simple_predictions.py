"""Two model-free predictors for a LongLaMP-format split, as reference points for `flythinker evaluate`.

    python scripts/simple_predictions.py ../shared/data/gitcommits/user_based/test.json --out runs/simple

writes OUT/copy_input.jsonl (prediction = the query) and OUT/last_profile.jsonl (prediction =
the user's most recent profile item, by date, else the last in the list).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flythinker.data.longlamp import load_examples, render_profile_item
from flythinker.data.retrieval import recent_rank


def _last_profile_text(example) -> str:
    if not example.profile:
        return ""
    item = example.profile[recent_rank(example.profile, k=1)[0]]
    return str(item.get("text") or render_profile_item(item, example.task))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a LongLaMP-format file (or folder with --split)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    examples = load_examples(args.data, split=args.split)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, predict in (("copy_input", lambda e: e.input), ("last_profile", _last_profile_text)):
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": e.id, "prediction": predict(e)}) + "\n" for e in examples))
        print(f"wrote {path} ({len(examples)} predictions)")


if __name__ == "__main__":
    main()
