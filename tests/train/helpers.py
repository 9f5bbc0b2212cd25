"""Tiny training configs for the train tests (2-layer, 32-wide Qwen2s on the gitcommits sample)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / ".." / "shared" / "data" / "gitcommits" / "sample" / "user_based"

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "max_positions": 512}


def tiny_raw(**sections) -> dict:
    """A raw (dict) config; keyword sections are merged into the defaults one level deep."""
    raw = {
        "model": {
            "mode": "flythinker",
            "lam": 0.5,
            "generator": {"tiny": dict(TINY)},
            "reasoner": {"tiny": dict(TINY)},
            "tokenizer": "train",
            "tokenizer_vocab_size": 400,
        },
        "data": {
            "path": str(SAMPLE),
            "limit_train": 8,
            "limit_dev": 4,
            "prompt": {"retrieval": "recent", "k": 1, "profile_tokens": 48, "query_tokens": 32, "target_tokens": 48},
        },
        "train": {"epochs": 2, "batch_size": 2, "lr": 1e-2, "warmup_steps": 1, "seed": 0, "save_every": 0},
    }
    for name, values in sections.items():
        raw[name].update(values)
    return raw


def tiny_config(**sections):
    from flythinker.train.config import TrainConfig
    from flythinker.train.config import from_dict as build

    return build(TrainConfig, tiny_raw(**sections))


def write_yaml(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text("# flythinker train " + str(path) + "\n" + yaml.safe_dump(raw, sort_keys=False))
    return path
