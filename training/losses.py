"""Losses: adversarial objectives selectable by name, plus the reconstruction terms.

The discriminator side and the generator side are separate calls, so that a recipe reads like the
papers do::

    gan = GANLoss("lsgan")
    loss_d = gan.d_loss(D(real), D(fake.detach()))
    loss_g = gan.g_loss(D(fake))                     # relativistic: gan.g_loss(D(fake), D(real))

Conventions (fixed; recipes rely on them):

* ``d_loss`` is the **mean** of the real term and the fake term (the reference CycleGAN/pix2pix
  code halves the discriminator loss, and ESRGAN averages its relativistic terms). With Adam the
  overall scale barely matters, but it keeps the numbers comparable across recipes.
* Logits are raw discriminator outputs (no sigmoid); any shape (PatchGAN maps are fine), reduced
  by the mean.
* ``real_target`` < 1 is one-sided label smoothing: it changes only the discriminator's target
  for real samples (Salimans et al., 2016); the generator always aims at 1.
* Reconstruction terms return the unweighted L1; the recipe multiplies by its lambda
  (cycle 10, identity 0.5 * 10, pix2pix L1 100 in the reference configs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Canonical names first; aliases map onto them.
GAN_LOSSES: tuple[str, ...] = ("vanilla", "lsgan", "hinge", "wgan-gp", "ragan")
_ALIASES = {
    "non-saturating": "vanilla",
    "nonsaturating": "vanilla",
    "bce": "vanilla",
    "wgan": "wgan-gp",
    "wgangp": "wgan-gp",
    "relativistic": "ragan",
    "relativistic-average": "ragan",
}
# Losses whose targets are labels; smoothing makes no sense for margin/Wasserstein objectives.
_LABEL_LOSSES = {"vanilla", "lsgan", "ragan"}


def resolve_gan_loss(name: str) -> str:
    """The canonical name of a GAN loss; raises ValueError listing the valid names."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in GAN_LOSSES:
        valid = ", ".join(GAN_LOSSES)
        aliases = ", ".join(f"{a} (= {c})" for a, c in _ALIASES.items())
        raise ValueError(f"unknown GAN loss '{name}': choose one of {valid}; aliases: {aliases}")
    return key


class GANLoss:
    """An adversarial objective by name: ``vanilla`` (non-saturating BCE-with-logits), ``lsgan``,
    ``hinge``, ``wgan-gp`` (add :func:`gradient_penalty` yourself) or ``ragan`` (relativistic
    average, as in ESRGAN; its ``g_loss`` needs the real logits too)."""

    def __init__(self, name: str = "lsgan", real_target: float = 1.0) -> None:
        self.name = resolve_gan_loss(name)
        if not 0.0 < real_target <= 1.0:
            raise ValueError(f"real_target must be in (0, 1], got {real_target}")
        if real_target != 1.0 and self.name not in _LABEL_LOSSES:
            raise ValueError(
                f"label smoothing (real_target={real_target}) applies to {sorted(_LABEL_LOSSES)} only, "
                f"not '{self.name}'; leave real_target at 1.0"
            )
        self.real_target = float(real_target)

    @property
    def needs_real_for_g(self) -> bool:
        """True when ``g_loss`` must also be given the discriminator's logits on real samples."""
        return self.name == "ragan"

    def __repr__(self) -> str:
        return f"GANLoss({self.name!r}, real_target={self.real_target})"

    # -- the two sides ----------------------------------------------------------------------------
    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """Discriminator loss: the mean of its real and fake terms (pass fake logits of detached fakes)."""
        real, fake = real_logits.float(), fake_logits.float()
        if self.name == "vanilla":
            return 0.5 * (_bce(real, self.real_target) + _bce(fake, 0.0))
        if self.name == "lsgan":
            return 0.5 * (_mse(real, self.real_target) + _mse(fake, 0.0))
        if self.name == "hinge":
            return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        if self.name == "wgan-gp":
            return fake.mean() - real.mean()
        # ragan: is the real sample more realistic than the average fake, and vice versa?
        return 0.5 * (_bce(real - fake.mean(), self.real_target) + _bce(fake - real.mean(), 0.0))

    def g_loss(self, fake_logits: Tensor, real_logits: Tensor | None = None) -> Tensor:
        """Generator loss on the discriminator's logits for (non-detached) fakes."""
        fake = fake_logits.float()
        if self.name == "vanilla":  # non-saturating: maximise log D(G(z))
            return _bce(fake, 1.0)
        if self.name == "lsgan":
            return _mse(fake, 1.0)
        if self.name in {"hinge", "wgan-gp"}:
            return -fake.mean()
        if real_logits is None:
            raise ValueError(
                "the 'ragan' generator loss needs real_logits: g_loss(D(fake), D(real).detach())"
            )
        real = real_logits.float().detach()  # G cannot change D's view of real data
        return 0.5 * (_bce(real - fake.mean(), 0.0) + _bce(fake - real.mean(), 1.0))


def _bce(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _mse(logits: Tensor, target: float) -> Tensor:
    return F.mse_loss(logits, torch.full_like(logits, target))


def gradient_penalty(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP penalty (Gulrajani et al., 2017): E[(||grad_x D(x)||_2 - 1)^2] on random
    interpolates of real and fake. Unweighted; the usual weight is 10. Multi-output
    (PatchGAN) critics are summed per sample before differentiating."""
    fake = fake.detach()
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1.0 - alpha) * fake).requires_grad_(True)
    out = discriminator(mixed)
    (grad,) = torch.autograd.grad(out.float().sum(), mixed, create_graph=True)
    norm = grad.flatten(1).float().norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


def l1_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error (pix2pix's reconstruction term, weight 100 in the paper)."""
    return F.l1_loss(prediction.float(), target.float())


def cycle_consistency_loss(real: Tensor, reconstructed: Tensor) -> Tensor:
    """||F(G(x)) - x||_1 (CycleGAN, weight lambda_cycle = 10 per direction)."""
    return l1_loss(reconstructed, real)


def identity_loss(real: Tensor, same: Tensor) -> Tensor:
    """||G(y) - y||_1: a generator fed its own target domain should leave it alone
    (CycleGAN, weight lambda_identity * lambda_cycle = 0.5 * 10)."""
    return l1_loss(same, real)


# -- losses on frozen pretrained features ----------------------------------------------------------
def channel_statistics(features: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Per-image, per-channel mean and standard deviation of each feature map (N x C each), the
    statistics AdaIN-style losses match (Huang & Belongie, 2017)."""
    out = []
    for f in features:
        flat = f.float().flatten(2)
        out.append((flat.mean(2), (flat.var(2, unbiased=False) + 1e-6).sqrt()))
    return out


def statistics_loss(stats: list[tuple[Tensor, Tensor]], target: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Mean squared distance between images' feature statistics and the target's (broadcast: the
    target may be one domain-wide 1 x C pair per layer), summed over layers."""
    total = torch.zeros((), device=stats[0][0].device)
    for (mu, sd), (mu_t, sd_t) in zip(stats, target, strict=True):
        total = total + F.mse_loss(mu, mu_t.expand_as(mu)) + F.mse_loss(sd, sd_t.expand_as(sd))
    return total


def feature_content_loss(features: list[Tensor], reference: list[Tensor], layers: tuple[int, ...]) -> Tensor:
    """Mean squared distance between two images' features on ``layers`` (content preservation: what
    is where stays, while the statistics loss changes how it looks)."""
    total = torch.zeros((), device=features[0].device)
    for i in layers:
        total = total + F.mse_loss(features[i].float(), reference[i].float().detach())
    return total


def sliced_wasserstein_loss(
    features: list[Tensor],
    target: list[Tensor],
    projections: int = 32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced Wasserstein distance between the distributions of feature vectors (one per position) of
    each image and of its target image, summed over layers (Heitz et al., CVPR 2021).

    Every position's C-dim feature is projected on ``projections`` random unit directions (fresh each
    call); the sorted projections of the image and the target are compared by mean squared error, so
    the whole distribution of each direction must match, not only its mean and spread: a few extreme
    pixels (a bright blob) cannot stand in for a texture. Both images' maps must have one size per layer."""
    total = torch.zeros((), device=features[0].device)
    for f, t in zip(features, target, strict=True):
        n, c = f.shape[:2]
        dirs = torch.randn(c, projections, generator=generator).to(f.device)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pf = f.float().flatten(2).transpose(1, 2) @ dirs  # N x HW x K
        pt = t.float().detach().flatten(2).transpose(1, 2) @ dirs
        total = total + F.mse_loss(pf.sort(dim=1).values, pt.sort(dim=1).values)
    return total
