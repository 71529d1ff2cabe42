"""Class-conditional GAN: a DCGAN-style or style-based generator + projection discriminator
(`transfigure train cgan`).

Reads top to bottom: the configuration, the nets, the data, one training step, the sample grid,
evaluation and export. The recipe is the SN-GAN/SAGAN line for small conditional image sets:

* **projection discriminator** with spectral norm (why not AC-GAN: see
  ``training/networks/conditional.py``), **hinge loss** by default (any loss of
  ``training.losses`` works; one-sided label smoothing for the label-based ones);
* **TTUR** (Heusel et al., 2017): D learns 4x faster than G (4e-4 vs 1e-4), Adam betas (0, 0.9)
  as in SAGAN, one D step per G step;
* fakes use the labels of the real batch, so every class is trained as often as it occurs;
* an **EMA** of the generator's weights (the loop keeps it; ``--ema-decay``) is what the sample
  grid shows and what gets exported;
* optional minibatch standard deviation feature in D (``--minibatch-std``) against mode collapse;
* **DiffAugment** (``--diffaug translation,cutout``; Zhao et al., 2020): the same random,
  differentiable transforms on real and fake images whenever D sees them. On a few thousand
  training images per class D otherwise memorises them and G collapses to one image per class;
* **mode seeking** (``--mode-seeking``; Mao et al., CVPR 2019): the G step also draws a second
  noise for every label and adds ``w / (mean|G(z1,y) - G(z2,y)| / mean|z1 - z2|)``, penalising a
  generator whose images stop changing with z (with conditional BN at every layer, the class
  signal can otherwise drown the noise: one near-identical image per class);
* the EMA generator's batch-norm statistics are recomputed for the averaged weights before it is
  sampled or saved (:func:`training.loop.recalibrate_batch_norm`): the live net's statistics do
  not fit the averaged weights.

``--generator`` picks the generator: ``dcgan`` (default; ``training/networks/conditional.py``) or
``style`` (``training/networks/style.py``: mapping network, modulated convolutions, noise inputs,
per-class average of w for the truncation trick). With ``style``, ``--style-mixing`` is the share of
fakes drawn with two latents whose styles cross over at a random layer (StyleGAN's mixing
regularisation), and the EMA generator's per-class average of w is recomputed from its own mapping
network before it is sampled or saved.

Data: a folder of Quick, Draw! ``.npy`` files, MNIST/Fashion-MNIST idx files or one sub-folder per
class (``training/data/labelled.py``); the train split is all but the last ``--test-fraction`` of
each class. The class names are saved in the config (hence the checkpoint and the card).
Sample grid: one row per class, the same noise in every column. Evaluation asks a judge (a
``train classifier`` run on the same data, ``--judge``) about the samples.

Exported net ``G``: ``(z: N x latent_dim float32, label: N int64) -> N x C x S x S`` in [-1, 1];
a style generator's graph also takes ``psi``, ``z2``, ``mix_layer`` and ``blend``
(:data:`models.card.STYLE_INPUTS`; the card's ``style`` record names them and the style layers).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from training.config import ConfigError, Renamed, add_config_arguments
from training.data.labelled import (  # noqa: F401 - resolve_data_fields: also this module's API
    LabelledImages,
    describe_dataset,
    load_split,
    load_train_set,
    resolve_data_fields,
)
from training.diffaug import POLICIES, diff_augment, parse_policy
from training.evaluate import evaluate_samples
from training.export_io import sample_export_io
from training.loop import Runtime, batch_stream, cli_train, image_grid, recalibrate_batch_norm, to_device
from training.losses import GANLoss, gradient_penalty
from training.networks.conditional import OUTPUT_SIZES, ConditionalGenerator, ProjectionDiscriminator
from training.networks.style import STYLE_LAYERS, StyleGenerator
from training.provenance import portable_path
from training.recipes import ExportSpec
from training.recipes.classifier import load_judge
from training.recipes.common import AdversarialConfig, gan_loss_field

NAME = "cgan"
SAMPLES_PER_CLASS = 8  # columns of the sample grid
CALIBRATION_BATCHES = 16  # batches of fresh noise that re-estimate the EMA generator's BN statistics
W_AVG_SAMPLES = 2048  # latents per class whose mean w is the EMA style generator's w_avg
GENERATORS = ("dcgan", "style")


@dataclass
class Config(AdversarialConfig):
    # former names, still read from saved configs and accepted on the command line
    renamed: ClassVar[Mapping[str, Renamed]] = {
        "loss": Renamed("gan_loss"),
        "label_smoothing": Renamed("real_label", lambda smoothing: 1.0 - smoothing),
    }

    data: str = field(
        default="",
        metadata={
            "help": "labelled data: a folder of Quick, Draw! <class>.npy files, MNIST/Fashion-MNIST "
            "idx files, or one sub-folder of images per class"
        },
    )
    classes: tuple[str, ...] = field(
        default=(), metadata={"help": "train on these classes only, in this order (default: all, sorted)"}
    )
    channels: int = field(default=0, metadata={"help": "image channels, 1 or 3 (0: from the data)"})
    image_size: int = field(
        default=28, metadata={"help": "output size; 28 px data is padded to 32", "choices": OUTPUT_SIZES}
    )
    test_fraction: float = field(default=0.1, metadata={"help": "last fraction of each class held out"})
    latent_dim: int = field(default=128, metadata={"help": "noise dimension"})
    ngf: int = field(default=64, metadata={"help": "generator width"})
    ndf: int = field(default=64, metadata={"help": "discriminator width"})
    embed_dim: int = field(default=64, metadata={"help": "class embedding size in the generator"})
    generator: str = field(
        default="dcgan",
        metadata={
            "help": "generator architecture: dcgan (conditional batch norm) or style (mapping network, "
            "modulated convolutions, noise inputs; sampled with truncation and style mixing; its equalised "
            "learning rate wants --lr-g about 2e-3)",
            "choices": GENERATORS,
        },
    )
    w_dim: int = field(default=128, metadata={"help": "style generator: size of w"})
    mapping_layers: int = field(
        default=4, metadata={"help": "style generator: layers of the mapping network"}
    )
    style_mixing: float = field(
        default=0.9,
        metadata={"help": "style generator: share of fakes drawn with two latents mixed at a random layer"},
    )
    gan_loss: str = gan_loss_field("hinge")
    lr_g: float = field(default=1e-4, metadata={"help": "generator learning rate (TTUR)"})
    lr_d: float = field(default=4e-4, metadata={"help": "discriminator learning rate (TTUR)"})
    beta1: float = field(default=0.0, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.9, metadata={"help": "Adam beta2"})
    d_steps: int = field(
        default=1, metadata={"help": "discriminator updates per generator update (on the same real batch)"}
    )
    spectral_norm: bool = field(default=True, metadata={"help": "spectral norm on every D weight"})
    minibatch_std: bool = field(default=False, metadata={"help": "minibatch std-dev feature in D"})
    mode_seeking: float = field(
        default=0.1,
        metadata={
            "help": "weight of the mode-seeking term (MSGAN): pushes two noises of one class apart; 0 = off"
        },
    )
    diffaug: str = field(
        default="translation,cutout",
        metadata={
            "help": f"DiffAugment ops on D's inputs, comma-separated ({', '.join(POLICIES)}); '' = off"
        },
    )
    # loop defaults that differ for this recipe
    steps: int = field(default=20_000, metadata={"help": "total optimisation steps (iterations)"})
    batch_size: int = field(default=64, metadata={"help": "images per step and process"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA of generator weights (0: off)"})
    num_workers: int = field(
        default=0, metadata={"help": "data loading processes (the data is in memory: 0 is fastest)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_policy(self.diffaug)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.mode_seeking < 0:
            raise ConfigError(f"--mode-seeking must be >= 0 (0 = off), got {self.mode_seeking}")
        if not 0.0 <= self.style_mixing <= 1.0:
            raise ConfigError(f"--style-mixing is a share of the fakes, in [0, 1]; got {self.style_mixing}")
        if self.w_dim < 1 or self.mapping_layers < 1:
            raise ConfigError(
                f"--w-dim and --mapping-layers must be at least 1, got {self.w_dim} and {self.mapping_layers}"
            )


# ------------------------------------------------------------------------------------------------
# nets
# ------------------------------------------------------------------------------------------------
def _num_classes(config: Config) -> int:
    if not config.classes or config.channels not in (1, 3):
        raise ConfigError(
            "the config names no classes/channels; they are filled in from --data when training starts "
            "(a config from a finished run always has them)"
        )
    return len(config.classes)


def build_inference_nets(config: Config) -> dict[str, torch.nn.Module]:
    """The class-conditional generator (``config.generator``)."""
    if config.generator == "style":
        style = StyleGenerator(
            _num_classes(config),
            latent_dim=config.latent_dim,
            out_ch=config.channels,
            output_size=config.image_size,
            ngf=config.ngf,
            embed_dim=config.embed_dim,
            w_dim=config.w_dim,
            mapping_layers=config.mapping_layers,
        )
        return {"G": style}
    g = ConditionalGenerator(
        _num_classes(config),
        latent_dim=config.latent_dim,
        out_ch=config.channels,
        output_size=config.image_size,
        ngf=config.ngf,
        embed_dim=config.embed_dim,
    )
    return {"G": g}


def build_discriminator(config: Config) -> ProjectionDiscriminator:
    return ProjectionDiscriminator(
        _num_classes(config),
        in_ch=config.channels,
        ndf=config.ndf,
        spectral_norm=config.spectral_norm,
        minibatch_std=config.minibatch_std,
    )


def export_specs(config: Config) -> dict[str, ExportSpec]:
    classes = list(config.classes)
    style = config.generator == "style"
    kind = "style-based GAN (StyleGAN2 design; truncation and style mixing)" if style else "DCGAN"
    return {
        "G": ExportSpec(
            task="sample",
            method="cgan",
            description=f"Class-conditional {kind} ({len(classes)} classes: {', '.join(classes)}), "
            f"{config.image_size}x{config.image_size} px, trained with a projection discriminator "
            f"({config.gan_loss} loss{', spectral norm' if config.spectral_norm else ''}).",
            style_layers=STYLE_LAYERS if style else None,
            output_channels=config.channels,
            output_range=(-1.0, 1.0),
            classes=classes,
            latent_dim=config.latent_dim,
            output_size=config.image_size,
            dataset=describe_dataset(
                config.data, config.test_fraction, classes, config.image_size, config.channels
            )
            if config.data
            else {},
        )
    }


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
class CGANRecipe:
    """What the loop drives: nets, optimizers, the batch stream, one step, the sample grid."""

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.dataset = load_train_set(cfg)
        dev = rt.device
        self.G = build_inference_nets(cfg)["G"].to(dev)
        self.D = build_discriminator(cfg).to(dev)
        self.nets = {"G": self.G, "D": self.D}
        self.generators = ("G",)
        betas = (cfg.beta1, cfg.beta2)
        self.optimizers = {
            "G": torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas),
            "D": torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas),
        }
        self.schedulers: dict[str, Any] = {}  # constant learning rates, as SN-GAN/SAGAN
        self.gan = GANLoss(cfg.gan_loss, cfg.real_label)
        self.augment_ops = parse_policy(cfg.diffaug)
        # Fixed noise for the sample grid (its own generator: never touches the training RNG).
        self.grid_z = torch.randn(
            SAMPLES_PER_CLASS, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)
        )

    def batches(self, start_step: int):
        return batch_stream(self.dataset, self.cfg, self.rt, start_step)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, device=self.rt.device)

    def _generate(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Fakes for ``z``; a style generator mixes a ``--style-mixing`` share of them with a second
        latent from a random layer on (the same label: mixing never crosses classes)."""
        if self.cfg.generator != "style" or self.cfg.style_mixing <= 0:
            return self.G(z, label)
        n, layers, dev = z.shape[0], self.G.num_layers, z.device
        crossover = torch.randint(1, layers, (n,), device=dev)
        mixed = torch.rand(n, device=dev) < self.cfg.style_mixing
        mix_layer = torch.where(mixed, crossover, torch.full_like(crossover, layers))
        return self.G(z, label, z2=self._noise(n), mix_layer=mix_layer)

    def _d(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """D on a DiffAugmented view of ``x`` (a fresh draw of the transforms every call)."""
        return self.D(diff_augment(x, self.augment_ops) if self.augment_ops else x, label)

    def calibrate_generator(self, name: str, g: torch.nn.Module) -> None:
        """Batch-norm statistics for the EMA weights: CALIBRATION_BATCHES batches of fresh noise
        with uniformly drawn labels, from a fixed seed (the same weights give the same statistics)."""
        rng = torch.Generator().manual_seed(self.cfg.seed + 2)
        n, k, dev = self.cfg.batch_size, len(self.cfg.classes), self.rt.device

        def inputs():
            for _ in range(CALIBRATION_BATCHES):
                z = torch.randn(n, self.cfg.latent_dim, generator=rng).to(dev)
                yield z, torch.randint(0, k, (n,), generator=rng).to(dev)

        recalibrate_batch_norm(g, inputs(), self.rt.autocast)
        if isinstance(g, StyleGenerator):
            g.recompute_w_avg(W_AVG_SAMPLES, seed=self.cfg.seed + 2)

    def train_step(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        real, label = to_device(batch, self.rt.device)
        n, rt, opt_g, opt_d = real.shape[0], self.rt, self.optimizers["G"], self.optimizers["D"]

        # discriminator: real images with their labels vs fakes of the same labels
        for _ in range(self.cfg.d_steps):
            with torch.no_grad(), rt.autocast():
                fake = self._generate(self._noise(n), label)
            with rt.autocast():
                loss_d = self.gan.d_loss(self._d(real, label), self._d(fake, label))
            if self.gan.name == "wgan-gp":
                loss_d = loss_d + self.cfg.gp_weight * gradient_penalty(
                    lambda x: self._d(x, label), real, fake.float()
                )
            opt_d.zero_grad(set_to_none=True)
            rt.backward(loss_d)
            rt.step(opt_d)

        # generator: fool D on fresh noise, same labels
        self.D.requires_grad_(False)  # no D gradients to compute or leak into the next D step
        metrics = {}
        with rt.autocast():
            if self.cfg.mode_seeking > 0:  # a second noise per label, in the same G pass
                z = self._noise(2 * n)
                fakes = self._generate(z, torch.cat([label, label]))
                fake, fake2 = fakes[:n], fakes[n:]
            else:
                fake = self._generate(self._noise(n), label)
            fake_logits = self._d(fake, label)
            real_logits = self._d(real, label) if self.gan.needs_real_for_g else None
            loss_g = self.gan.g_loss(fake_logits, real_logits)
        if self.cfg.mode_seeking > 0:
            ratio = (fake.float() - fake2.float()).abs().mean() / (z[:n] - z[n:]).abs().mean()
            loss_g = loss_g + self.cfg.mode_seeking / (ratio + 1e-5)
            metrics["G_diversity"] = ratio.detach()
        self.D.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        rt.backward(loss_g)
        rt.step(opt_g)
        metrics.update(G_loss=loss_g.detach(), D_loss=loss_d.detach())  # tensors: no GPU sync per step
        return metrics

    def sample_images(self, generators: dict[str, torch.nn.Module], step: int) -> torch.Tensor:
        g = generators["G"]
        z = self.grid_z.to(self.rt.device)
        rows = [
            g(z, torch.full((len(z),), c, dtype=torch.long, device=z.device))
            for c in range(len(self.cfg.classes))
        ]
        return image_grid(rows, (-1.0, 1.0))


# ------------------------------------------------------------------------------------------------
# evaluation and export
# ------------------------------------------------------------------------------------------------
def evaluate(run, report, options, data: str | None = None, judge: str | None = None) -> str:
    """The samples as the judge (``--judge``, a classifier run on the same data) sees them, against
    the test split (see :func:`training.evaluate.evaluate_samples`)."""
    if not judge:
        raise ValueError(
            "cgan evaluation needs a judge: --judge RUN of `transfigure train classifier` on the same data"
        )
    judge_net, jcfg = load_judge(judge)
    cfg = run.config
    classes = list(cfg.classes)
    if list(jcfg.classes) != classes:
        raise ValueError(f"the judge was trained on classes {list(jcfg.classes)}, the cGAN on {classes}")
    test = LabelledImages(
        load_split(cfg.data, "test", cfg.test_fraction, classes, cfg.image_size, cfg.channels), cfg.image_size
    )
    real = (test.images, test.labels.numpy())
    evaluate_samples(
        run, report, options, real, judge_net, jcfg.image_size, f"classifier run {portable_path(judge)}"
    )
    return cfg.data


def export_io(run, net: str, spec: ExportSpec, options):
    """Grid and calibration from seeded noise; the INT8 metric asks the ``--judge`` classifier."""

    def judge():
        judge_net, jcfg = load_judge(options.judge)
        return judge_net, jcfg.image_size

    return sample_export_io(run.nets[net], spec, judge if options.judge else None, options)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, Config)


def run(args: argparse.Namespace) -> int:
    return cli_train(NAME, Config, CGANRecipe, args, prepare=resolve_data_fields)
