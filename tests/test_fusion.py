"""The paper's f(): e'_i = E_G(s_i) + λ·ρ·z_{i-1}/‖z_{i-1}‖, written once (fusion.py)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from flythinker.fusion import Fusion, embedding_norm, shift_latents


def test_rho_is_the_mean_row_norm_and_detached():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    rho = embedding_norm(w)
    assert rho.item() == pytest.approx(3.0) and not rho.requires_grad


@pytest.mark.parametrize("lam", [0.1, 0.5, 2.0])
def test_prefix_offset_has_norm_lambda_rho_in_the_first_d_r_dims_only(lam):
    torch.manual_seed(0)
    f = Fusion(d_reasoner=8, d_generator=16, lam=lam)
    embeds, z = torch.randn(2, 5, 16), 10 * torch.randn(2, 5, 8)
    out = f(embeds, z, rho=torch.tensor(3.0))
    offset = out - embeds  # (B, T, 16)
    assert_close(offset[..., 8:], torch.zeros(2, 5, 8))
    assert_close(offset[..., :8].norm(dim=-1), torch.full((2, 5), lam * 3.0), atol=1e-5, rtol=1e-5)
    assert_close(
        offset[..., :8] / offset[..., :8].norm(dim=-1, keepdim=True),
        z / z.norm(dim=-1, keepdim=True),
        atol=1e-5,
        rtol=1e-5,
    )  # the latent's direction, whatever its size


def test_lambda_zero_is_exactly_sft_and_the_mask_switches_positions_off():
    embeds, z = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    assert Fusion(8, 8, lam=0.0)(embeds, z, torch.tensor(1.0)) is embeds
    mask = torch.tensor([[0, 1, 0, 1]])
    out = Fusion(8, 8, lam=0.5)(embeds, z, torch.tensor(1.0), mask)
    assert torch.equal(out[:, [0, 2]], embeds[:, [0, 2]]) and not torch.equal(out[:, 1], embeds[:, 1])


def test_linear_mode_starts_as_prefix_and_is_needed_when_r_is_wider():
    embeds, z = torch.randn(2, 3, 16), torch.randn(2, 3, 8)
    rho = torch.tensor(2.0)
    assert_close(Fusion(8, 16, 0.5, "linear")(embeds, z, rho), Fusion(8, 16, 0.5, "prefix")(embeds, z, rho))
    with pytest.raises(ValueError, match="fusion='linear'"):
        Fusion(d_reasoner=32, d_generator=16, mode="prefix")
    wide = Fusion(32, 16, 0.5, "linear")(embeds, torch.randn(2, 3, 32), rho)
    assert_close((wide - embeds).norm(dim=-1), torch.full((2, 3), 1.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf"), "0.5"])
def test_bad_lambda_is_refused(lam):
    with pytest.raises(ValueError, match="lam must be"):
        Fusion(8, 8, lam=lam)


def test_bf16_embeddings_are_normalised_in_fp32():
    torch.manual_seed(1)
    embeds = torch.zeros(1, 2, 1024, dtype=torch.bfloat16)
    out = Fusion(1024, 1024, lam=1.0)(embeds, torch.randn(1, 2, 1024, dtype=torch.bfloat16), torch.tensor(5.0))
    assert out.dtype == torch.bfloat16
    assert_close(out.float().norm(dim=-1), torch.full((1, 2), 5.0), atol=0.02, rtol=0.0)


def test_shift_gives_position_i_the_latent_of_i_minus_1_and_masks_first_tokens_and_padding():
    z = torch.arange(1, 5, dtype=torch.float).view(1, 4, 1).repeat(2, 1, 1)  # z_i = i + 1
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])  # row 1 left-padded
    shifted, latent_mask = shift_latents(z, mask)
    assert shifted[0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert latent_mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]  # no latent at a row's first real token


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_a_detached_norm_changes_the_backward_only(lam):
    """model.detach_latent_norm (the released training script's ‖z‖.detach()): the same offset, but
    R gets the upstream gradient scaled by λρ/‖z‖, its component along z included; with the norm
    differentiated the gradient is orthogonal to z (the direction z/‖z‖ ignores z's length)."""
    torch.manual_seed(0)
    z, upstream, rho = torch.randn(3, 4, 8), torch.randn(3, 4, 8), torch.tensor(2.0)
    grads, outs = {}, {}
    for detach in (False, True):
        f = Fusion(d_reasoner=8, d_generator=8, lam=lam, detach_norm=detach)
        zz = z.clone().requires_grad_(True)
        outs[detach] = f(torch.zeros(3, 4, 8), zz, rho)
        (outs[detach] * upstream).sum().backward()
        grads[detach] = zz.grad
    assert torch.equal(outs[False], outs[True])
    assert_close((grads[False] * z).sum(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    assert_close(grads[True], lam * rho * upstream / z.norm(dim=-1, keepdim=True))
    assert "detach_norm=True" in repr(Fusion(8, 8, detach_norm=True))


def test_the_training_config_sets_the_norms_backward_rule():
    from tiny_models import tiny_pair

    from flythinker.train.assemble import prepare_for_training
    from flythinker.train.config import ModelConfig, UserError

    model = tiny_pair(d_g=32, d_r=32, lam=0.5)
    assert model.fusion.detach_norm is False
    prepare_for_training(model, ModelConfig(detach_latent_norm=True), gradient_checkpointing=False)
    assert model.fusion.detach_norm is True
    with pytest.raises(UserError, match="detach_latent_norm"):
        ModelConfig(detach_latent_norm="yes")
