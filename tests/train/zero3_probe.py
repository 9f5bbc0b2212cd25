"""Run under ``accelerate launch`` with DeepSpeed ZeRO-3 by test_zero3.py: the trainer's setup, then
what ρ and the latent are inside a sharded forward, then training; each rank writes OUT/rank{N}.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from flythinker.train.config import load_config
from flythinker.train.trainer import Trainer


def main(config: str, out: str) -> None:
    trainer = Trainer(load_config(config), out)
    trainer.setup()
    acc = trainer.acc
    model = acc.unwrap_model(trainer.model)
    embedding = model.generator.get_input_embeddings()
    seen = {}

    def offset_hook(module, args, output):  # the fusion's output minus its input: the latent actually added
        seen["offset_norm"] = float((output.float() - args[0].float()).norm())
        # the released script's ρ: G's table read after the embedding layer has run
        seen["released_rho"] = float(torch.norm(embedding.weight, p=2, dim=-1).mean())
        seen["table_numel_in_forward"] = embedding.weight.numel()

    handle = model.fusion.register_forward_hook(offset_hook)
    batch = next(iter(trainer.train_dl))
    with torch.no_grad():
        trainer.model(**batch)
    handle.remove()
    # outside a forward, as the released script's formula would read it between two layers' hooks
    seen["table_numel_outside"] = embedding.weight.numel()
    seen["released_rho_outside"] = float(torch.norm(embedding.weight, p=2, dim=-1).mean())
    result = trainer.fit()
    record = {"rho": float(model.rho()), "losses": result.losses, "sharded": type(trainer.model).__name__, **seen}
    Path(out, f"rank{acc.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:3])
