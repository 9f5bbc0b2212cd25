"""A cheaper Reasoner cut from a base: ``model.reasoner.num_layers`` keeps the first k decoder
layers of a local model, and the cut model is exactly the full one stopped after layer k."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB, tiny_causal_lm

from flythinker import loading
from flythinker.errors import UserError


@pytest.fixture
def three_layer_folder(tmp_path):
    model = tiny_causal_lm(hidden=32, layers=3, seed=4)
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base", model


def test_the_first_k_layers_are_the_full_model_stopped_after_layer_k(three_layer_folder):
    folder, _ = three_layer_folder
    full = loading.load_causal_lm(folder).eval()  # loaded the same way (the same attention kernel)
    cut = loading.load_causal_lm(folder, num_layers=2).eval()
    assert len(cut.model.layers) == 2 and cut.config.num_hidden_layers == 2
    assert cut.config.layer_types == full.config.layer_types[:2]
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after_two = full(ids, output_hidden_states=True).hidden_states[2]  # before the final norm
        expected = full.model.norm(after_two)
        got = cut(ids, output_hidden_states=True).hidden_states[-1]  # the last one has the final norm
    assert torch.equal(got, expected)
    for p_cut, p_full in zip(cut.model.layers.parameters(), full.model.layers[:2].parameters()):
        assert torch.equal(p_cut, p_full)


@pytest.mark.parametrize("k", [0, 4])
def test_a_cut_outside_the_model_names_its_layers(three_layer_folder, k):
    with pytest.raises(
        UserError, match=rf"model\.reasoner\.path: num_layers must be between 1 and the model's 3 layers, got {k}"
    ):
        loading.load_causal_lm(three_layer_folder[0], "model.reasoner.path", num_layers=k)


def test_a_flythinker_with_a_cut_reasoner_saves_and_reloads_with_k_layers(sample_tokenizer, tmp_path):
    """Built from the config, saved, reloaded: the reasoner has 2 layers and the same latents."""
    from flythinker import FlyThinker
    from flythinker.train.assemble import build_model
    from flythinker.train.config import ModelConfig, ModelSpec

    base = tiny_causal_lm(hidden=32, layers=3, vocab=len(sample_tokenizer), seed=4)
    base.save_pretrained(tmp_path / "base")
    folder = str(tmp_path / "base")
    cfg = ModelConfig(generator=ModelSpec(path=folder), reasoner=ModelSpec(path=folder, num_layers=2), lam=0.5)
    model = build_model(cfg, sample_tokenizer).eval()
    assert len(model.reasoner.model.layers) == 2 and len(model.generator.model.layers) == 3
    model.save_pretrained(tmp_path / "saved", tokenizer=sample_tokenizer)
    again = FlyThinker.from_pretrained(tmp_path / "saved").eval()
    assert again.reasoner.config.num_hidden_layers == 2 and len(again.reasoner.model.layers) == 2
    ids = torch.randint(3, len(sample_tokenizer), (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(
            model.reasoner(ids, output_hidden_states=True).hidden_states[-1],
            again.reasoner(ids, output_hidden_states=True).hidden_states[-1],
        )


def test_num_layers_is_refused_on_a_tiny_model():
    from flythinker.train.config import ModelSpec, TinyModel
    from flythinker.train.fromdict import ConfigError

    with pytest.raises(ConfigError, match="tiny.num_layers"):
        ModelSpec(tiny=TinyModel(), num_layers=1)
    with pytest.raises(ConfigError, match="whole number"):
        ModelSpec(path="/x", num_layers=0)
