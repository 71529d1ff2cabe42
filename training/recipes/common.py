"""What the GAN recipes share: the adversarial knobs, the image-translation config, held-out samples.

* :class:`AdversarialConfig` — ``gan_loss``, ``real_label`` and ``gp_weight``, one name and one
  flag each in every GAN recipe (cyclegan, pix2pix, cgan, srgan); each recipe sets its own default
  loss with :func:`gan_loss_field`.
* :class:`TranslationConfig` — the crops, nets, optimiser and schedule knobs that CycleGAN and
  pix2pix both have, with the reference implementation's defaults.
* :class:`HeldOutPairs` — the few (A, B) images a translation recipe's sample grid shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from training.config import ConfigError, TrainConfig
from training.data.images import EmptyFolderError
from training.losses import GAN_LOSSES, GANLoss, resolve_gan_loss
from training.networks import NORMS


def canonical_gan_loss(name: str) -> str:
    """A loss alias (``non-saturating``, ``relativistic``, ...) as its canonical name; other names as given."""
    try:
        return resolve_gan_loss(name)
    except ValueError:
        return name


def gan_loss_field(default: str, help: str = "adversarial loss") -> Any:
    """The ``gan_loss`` field with a recipe's own default (aliases are accepted and made canonical)."""
    return field(
        default=default, metadata={"help": help, "choices": GAN_LOSSES, "canonical": canonical_gan_loss}
    )


@dataclass
class AdversarialConfig(TrainConfig):
    """The adversarial objective's knobs, validated together (see :class:`training.losses.GANLoss`)."""

    gan_loss: str = gan_loss_field("vanilla")
    real_label: float = field(
        default=1.0,
        metadata={"help": "D's target for real samples; below 1 is one-sided label smoothing, e.g. 0.9 "
                  "(vanilla, lsgan, ragan only)"},
    )  # fmt: skip
    gp_weight: float = field(default=10.0, metadata={"help": "gradient penalty weight (wgan-gp only)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            GANLoss(self.gan_loss, self.real_label)
        except ValueError as e:
            raise ConfigError(
                f"--real-label {self.real_label} with --gan-loss {self.gan_loss}: "
                + str(e).replace("real_target", "--real-label")
            ) from None


@dataclass
class TranslationConfig(AdversarialConfig):
    """Image-to-image translation (CycleGAN, pix2pix): 70x70 PatchGAN, Adam 2e-4 / beta1 0.5, load
    286 -> crop 256, constant learning rate then linear decay, as in the reference implementation."""

    crop_size: int = field(default=256, metadata={"help": "training crop = the model's native size"})
    load_size: int | None = field(
        default=None, metadata={"help": "resize before cropping (None: crop * 286/256)"}
    )
    flip: bool = field(
        default=True, metadata={"help": "random horizontal flips (paired data: the same for both halves)"}
    )
    ngf: int = field(default=64, metadata={"help": "generator width"})
    ndf: int = field(default=64, metadata={"help": "discriminator width"})
    n_layers_d: int = field(default=3, metadata={"help": "PatchGAN depth (3: 70x70 patches)"})
    norm: str = field(default="instance", metadata={"help": "normalisation layers", "choices": NORMS})
    spectral_norm: bool = field(default=False, metadata={"help": "spectral norm on the discriminator(s)"})
    lr_g: float = field(default=2e-4, metadata={"help": "generator learning rate"})
    lr_d: float = field(default=2e-4, metadata={"help": "discriminator learning rate (TTUR if different)"})
    beta1: float = field(default=0.5, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    decay_start: int | None = field(
        default=None, metadata={"help": "step where linear lr decay starts (None: steps/2)"}
    )


class HeldOutPairs:
    """The first ``count`` (A, B) images of the test split, else of the training split, without
    augmentation: what a translation recipe's sample grid shows. Loaded on first use, then kept.

    ``build(phase)`` makes the dataset of a split (a folder that is missing or empty raises
    EmptyFolderError or ValueError); ``size(dataset)`` is how many distinct items it has."""

    def __init__(
        self,
        build: Callable[[str], Any],
        phases: Sequence[str],
        count: int = 4,
        size: Callable[[Any], int] = len,
    ) -> None:
        self.build, self.phases, self.count, self.size = build, tuple(phases), count, size
        self._images: tuple[Tensor, Tensor] | None = None

    def images(self) -> tuple[Tensor, Tensor]:
        if self._images is None:
            *preferred, last = self.phases
            dataset = None
            for phase in preferred:
                try:
                    dataset = self.build(phase)
                    break
                except (EmptyFolderError, ValueError):
                    continue
            dataset = dataset if dataset is not None else self.build(last)
            items = [dataset.load_item(i, 0) for i in range(min(self.count, self.size(dataset)))]
            self._images = (torch.stack([it["A"] for it in items]), torch.stack([it["B"] for it in items]))
        return self._images
