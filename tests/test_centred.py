"""The centred latent (model.center_latent, beyond the paper): λ·ρ·(z−μ)/‖z−μ‖ with R's mean latent μ
measured once on the first training batch, saved with the model, and used by every decoder."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import greedy_agrees_with_the_forward, left_padded_batch, tiny_causal_lm
from torch.testing import assert_close

from flythinker import FlyThinker
from flythinker.fusion import Fusion


def test_the_first_training_batch_fixes_mu_and_the_offset_is_the_centred_direction():
    f = Fusion(d_reasoner=8, d_generator=8, lam=0.5)
    f.enable_centering()
    z, mask = torch.randn(2, 5, 8) + 3.0, torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    f.eval()(torch.zeros(2, 5, 8), z, torch.tensor(2.0), mask)
    assert not bool(f.latent_mean_set)  # decoding never measures
    out = f.train()(torch.zeros(2, 5, 8), z, torch.tensor(2.0), mask)
    mu = z[mask.bool()].mean(0)
    assert_close(f.latent_mean, mu) and bool(f.latent_mean_set)
    centred = (z - mu) / (z - mu).norm(dim=-1, keepdim=True)
    assert_close(out[mask.bool()], (0.5 * 2.0 * centred)[mask.bool()])
    f(torch.zeros(2, 5, 8), z + 10.0, torch.tensor(2.0), mask)
    assert_close(f.latent_mean, mu)  # fixed after the first batch
    assert "centred" in repr(f)


def test_a_centred_model_decodes_as_it_trains_and_survives_save_and_load(tmp_path):
    model = FlyThinker(tiny_causal_lm(hidden=48, seed=0), tiny_causal_lm(hidden=32, seed=1), lam=0.5)
    model.fusion.enable_centering()
    ids, mask = left_padded_batch([7, 10], seed=2)
    model.train()(input_ids=ids, attention_mask=mask)  # the first training forward measures μ
    model.eval()
    assert bool(model.fusion.latent_mean_set) and model.fusion.latent_mean.abs().sum() > 0
    greedy_agrees_with_the_forward(model, ids, mask)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "flythinker.json").read_text())["center_latent"] is True
    loaded = FlyThinker.from_pretrained(tmp_path / "m", attn_implementation="eager")
    assert torch.equal(loaded.fusion.latent_mean, model.fusion.latent_mean)
    assert torch.equal(
        loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
    )
    plain = FlyThinker(tiny_causal_lm(hidden=48, seed=0), tiny_causal_lm(hidden=32, seed=1), lam=0.5).eval()
    assert not torch.equal(
        plain(input_ids=ids, attention_mask=mask).logits, loaded(input_ids=ids, attention_mask=mask).logits
    )


def test_the_config_switches_it_on_for_flythinker_only():
    from flythinker.train.assemble import prepare_for_training
    from flythinker.train.config import ModelConfig, UserError

    model = FlyThinker(tiny_causal_lm(hidden=32, seed=0), tiny_causal_lm(hidden=32, seed=1), lam=0.5)
    prepare_for_training(model, ModelConfig(center_latent=True), gradient_checkpointing=False)
    assert model.fusion.latent_mean is not None
    with pytest.raises(UserError, match="center_latent"):
        ModelConfig(mode="sft", center_latent=True)


def test_the_standardised_latent_divides_each_centred_dimension_by_its_deviation():
    f = Fusion(d_reasoner=8, d_generator=12, lam=0.5)
    f.enable_centering(standardize=True)
    scale = torch.tensor([0.01, 1.0, 5.0, 0.1, 2.0, 3.0, 0.5, 7.0])
    z, mask = torch.randn(3, 6, 8) * scale + 4.0, torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    out = f.train()(torch.zeros(3, 6, 12), z, torch.tensor(2.0), mask)
    real = z[mask.bool()]
    mu, sigma = real.mean(0), real.std(0, unbiased=False)
    assert_close(f.latent_mean, mu)
    assert_close(f.latent_scale, 1 / sigma, rtol=1e-4, atol=1e-4)
    u = (z - mu) / sigma
    want = nn_pad(0.5 * 2.0 * u / u.norm(dim=-1, keepdim=True), 12)
    assert_close(out[mask.bool()], want[mask.bool()], rtol=1e-4, atol=1e-5)
    assert "standardised" in repr(f)


def nn_pad(x, width):
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def test_a_standardised_model_survives_save_and_load_and_the_config_switches_it_on(tmp_path):
    from flythinker.train.assemble import prepare_for_training
    from flythinker.train.config import ModelConfig, UserError

    model = FlyThinker(tiny_causal_lm(hidden=48, seed=0), tiny_causal_lm(hidden=32, seed=1), lam=0.5)
    prepare_for_training(model, ModelConfig(standardize_latent=True), gradient_checkpointing=False)
    ids, mask = left_padded_batch([7, 10], seed=2)
    model.train()(input_ids=ids, attention_mask=mask)
    model.eval()
    assert model.fusion.latent_scale is not None and (model.fusion.latent_scale != 1).any()
    greedy_agrees_with_the_forward(model, ids, mask)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "flythinker.json").read_text())
    assert cfg["center_latent"] is True and cfg["standardize_latent"] is True
    loaded = FlyThinker.from_pretrained(tmp_path / "m", attn_implementation="eager")
    assert torch.equal(loaded.fusion.latent_scale, model.fusion.latent_scale)
    assert torch.equal(
        loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
    )
    with pytest.raises(UserError, match="standardize_latent"):
        ModelConfig(mode="sft", standardize_latent=True)
