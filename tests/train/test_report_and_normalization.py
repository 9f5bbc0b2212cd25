"""train.report_to (accelerate's trackers, TensorBoard here) and train.loss_normalization."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config


def test_tensorboard_gets_the_runs_losses(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from flythinker.train.trainer import train

    cfg = tiny_config(
        train={
            "epochs": 1,
            "batch_size": 2,
            "lr": 1e-3,
            "warmup_steps": 1,
            "seed": 0,
            "save_every": 0,
            "report_to": ["tensorboard"],
        }
    )
    result = train(cfg, tmp_path / "run")
    events = list((tmp_path / "run" / "tracking").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert losses == pytest.approx(result.losses, rel=1e-6)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, result.steps + 1))
    assert [e.value for e in acc.Scalars("eval/dev_loss")] == pytest.approx(result.dev_losses, rel=1e-6)


def test_an_unknown_tracker_is_refused():
    from flythinker.errors import UserError

    with pytest.raises(UserError, match="report_to"):
        tiny_config(train={"report_to": ["tensorbored"]})


def _final_weights(run):
    from flythinker import FlyThinker

    m = FlyThinker.from_pretrained(run / "final")
    return torch.cat([p.detach().flatten() for p in m.parameters()])


@pytest.mark.parametrize("normalization", ["tokens", "sequence"])
def test_accumulated_micro_batches_equal_one_big_batch_under_token_normalization(tmp_path, normalization):
    from flythinker.train.trainer import train

    runs = {}
    for name, (batch, ga) in {"big": (4, 1), "accumulated": (2, 2)}.items():
        cfg = tiny_config(
            train={
                "epochs": 1,
                "batch_size": batch,
                "grad_accum": ga,
                "lr": 1e-2,
                "warmup_steps": 1,
                "seed": 0,
                "save_every": 0,
                "eval": False,
                "loss_normalization": normalization,
            }
        )
        runs[name] = (train(cfg, tmp_path / name), _final_weights(tmp_path / name))
    (big, w_big), (acc, w_acc) = runs["big"], runs["accumulated"]
    logged = [json.loads(x) for x in (tmp_path / "big" / "log.jsonl").read_text().splitlines()]
    assert len(logged) >= 2 and big.steps == acc.steps
    same = big.losses == pytest.approx(acc.losses, rel=1e-6) and torch.allclose(w_big, w_acc, atol=1e-4)
    assert same is (normalization == "tokens")  # "sequence" weighs micro-batches, not tokens
