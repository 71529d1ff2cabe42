"""Adversarial and reconstruction losses: names, values on known logits, the gradient penalty."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.losses import (
    GAN_LOSSES,
    GANLoss,
    cycle_consistency_loss,
    gradient_penalty,
    identity_loss,
    l1_loss,
    resolve_gan_loss,
)


def full(value: float, shape=(2, 1, 4, 4)) -> torch.Tensor:
    return torch.full(shape, float(value))


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as e:
        GANLoss("wasserstein-ish")
    for name in GAN_LOSSES:
        assert name in str(e.value)


def test_aliases_and_case() -> None:
    assert resolve_gan_loss("Non-Saturating") == "vanilla"
    assert resolve_gan_loss("WGAN_GP") == "wgan-gp"
    assert resolve_gan_loss("relativistic") == "ragan"


def test_lsgan_values() -> None:
    gan = GANLoss("lsgan")
    assert gan.d_loss(full(1), full(0)).item() == pytest.approx(0.0)
    assert gan.d_loss(full(0), full(1)).item() == pytest.approx(1.0)  # mean of (0-1)^2 and (1-0)^2
    assert gan.d_loss(full(0.5), full(0.5)).item() == pytest.approx(0.25)
    assert gan.g_loss(full(1)).item() == pytest.approx(0.0)
    assert gan.g_loss(full(-1)).item() == pytest.approx(4.0)


def test_hinge_values() -> None:
    gan = GANLoss("hinge")
    assert gan.d_loss(full(2), full(-3)).item() == pytest.approx(0.0)  # beyond the margins
    assert gan.d_loss(full(0), full(0)).item() == pytest.approx(1.0)
    assert gan.d_loss(full(0.5), full(0.25)).item() == pytest.approx(0.5 * (0.5 + 1.25))
    assert gan.g_loss(full(0.75)).item() == pytest.approx(-0.75)


def test_vanilla_values_and_non_saturating_gradient() -> None:
    gan = GANLoss("vanilla")
    assert gan.d_loss(full(0), full(0)).item() == pytest.approx(math.log(2))
    assert gan.d_loss(full(20), full(-20)).item() < 1e-6
    # non-saturating: a confidently rejected fake still gives the generator a strong gradient
    fake = full(-10).requires_grad_(True)
    gan.g_loss(fake).backward()
    assert fake.grad.abs().sum() > 0.5


def test_wgan_values() -> None:
    gan = GANLoss("wgan-gp")
    assert gan.d_loss(full(3), full(1)).item() == pytest.approx(-2.0)
    assert gan.g_loss(full(1.5)).item() == pytest.approx(-1.5)


def test_ragan_needs_real_logits_and_is_symmetric() -> None:
    gan = GANLoss("ragan")
    assert gan.needs_real_for_g
    with pytest.raises(ValueError, match="real_logits"):
        gan.g_loss(full(0))
    # identical real and fake logits: every relativistic logit is 0 -> log 2 on both sides
    assert gan.d_loss(full(0.3), full(0.3)).item() == pytest.approx(math.log(2))
    assert gan.g_loss(full(0.3), full(0.3)).item() == pytest.approx(math.log(2))
    # fakes that look more real than reals are what the generator wants
    assert gan.g_loss(full(5), full(-5)).item() < gan.g_loss(full(-5), full(5)).item()


def test_label_smoothing_is_one_sided() -> None:
    smooth, plain = GANLoss("vanilla", real_target=0.9), GANLoss("vanilla")
    real, fake = full(20), full(-20)
    # a discriminator that is certain about reals is penalised only with smoothing
    assert smooth.d_loss(real, fake).item() > 0.5
    assert plain.d_loss(real, fake).item() < 1e-6
    # the generator side is unchanged
    assert smooth.g_loss(full(0.3)).item() == pytest.approx(plain.g_loss(full(0.3)).item())
    assert GANLoss("lsgan", real_target=0.9).d_loss(full(0.9), full(0)).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="label smoothing"):
        GANLoss("hinge", real_target=0.9)


class LinearCritic(nn.Module):
    def __init__(self, dim: int, norm: float) -> None:
        super().__init__()
        w = torch.randn(dim)
        self.w = nn.Parameter(w / w.norm() * norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def test_gradient_penalty_is_zero_for_a_1_lipschitz_linear_critic() -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    assert gradient_penalty(LinearCritic(3 * 8 * 8, 1.0), real, fake).item() < 1e-10
    # slope 2 -> (2 - 1)^2 = 1, and the penalty is differentiable w.r.t. the critic
    critic = LinearCritic(3 * 8 * 8, 2.0)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx(1.0, rel=1e-5)
    gp.backward()
    assert critic.w.grad is not None and critic.w.grad.abs().sum() > 0


def test_reconstruction_losses() -> None:
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert l1_loss(a, b).item() == pytest.approx(0.5)
    assert cycle_consistency_loss(a, b).item() == pytest.approx(0.5)
    assert identity_loss(a, a).item() == 0.0
    rec = b.clone().requires_grad_(True)
    cycle_consistency_loss(a, rec).backward()
    assert torch.all(rec.grad > 0)  # pulls the reconstruction back towards the input
