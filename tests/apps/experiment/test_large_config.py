"""Every row of the large protocol (experiment_gitcommits_large.yaml) is a valid training config, and
the paper-recipe rows set what the authors' released script sets (docs/faithfulness.md)."""

from __future__ import annotations

from pathlib import Path

from tiny_models import ROOT

from flythinker.apps.experiment.cells import cell_train_config
from flythinker.apps.experiment.config import load_experiment

CONFIG = ROOT / "src" / "flythinker" / "configs" / "experiment_gitcommits_large.yaml"


def test_every_row_of_the_large_protocol_is_a_valid_training_config():
    exp = load_experiment(CONFIG)
    bases = {name: Path("/models") / name for name in exp.bases}
    configs = {g.name: cell_train_config(exp, g, "user_based", 0, bases) for g in exp.groups()}
    assert {"sft_paper", "flythinker_paper", "flythinker_paper_gate"} <= set(configs)
    sft, fly, gate = configs["sft_paper"], configs["flythinker_paper"], configs["flythinker_paper_gate"]
    for cfg in (sft, fly, gate):
        t, p = cfg.train, cfg.data.prompt_config()
        assert (t.lr, t.weight_decay, t.warmup_ratio, t.warmup_steps, t.schedule) == (5e-6, 0.025, 0.01, None, "linear")
        assert (t.effective_batch_size, t.epochs, t.loss_normalization, t.seed) == (64, 5, "tokens", 0)
        assert (p.layout, p.retrieval) == ("official", "all")
        assert p.profile_tokens + p.query_tokens + p.target_tokens < 2048 - 64  # SmolLM2's context, template included
        assert cfg.model.generator.lora is None
    assert sft.model.mode == "sft"
    assert (fly.model.lam, fly.model.detach_latent_norm, fly.model.gate) == (0.5, True, "none")
    assert (gate.model.lam, gate.model.detach_latent_norm, gate.model.gate) == (0.5, True, "scalar")
