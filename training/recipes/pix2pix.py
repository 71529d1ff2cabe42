"""pix2pix: paired image-to-image translation with a conditional GAN (Isola et al., CVPR 2017).

A U-Net generator maps A to B; a 70x70 PatchGAN sees (A, B) pairs, real or generated. The loss is
the non-saturating GAN loss plus 100 * L1 to the target. Defaults follow the reference
(junyanz/pytorch-CycleGAN-and-pix2pix): Adam 2e-4 / beta1 0.5, batch 1, load 286 -> crop 256,
U-Net 256, no image pool, constant lr then linear decay. One deliberate difference: instance norm
instead of batch norm, because the reference's batch norm (batch 1) computes different statistics in
training and in eval/export — the train/test mismatch we avoid (``--norm batch`` restores it).

    transfigure train pix2pix --data shared/data/facades --direction BtoA --out runs/facades
"""

from __future__ import annotations

import argparse
import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from training.config import ConfigError, add_config_arguments
from training.data import PairedImageFolder
from training.data.catalog import provenance  # name, source, license of known datasets
from training.data.images import EmptyFolderError
from training.data.paired import DIRECTIONS, resolve_paired_files
from training.evaluate import (
    ImageRef,
    TranslationData,
    TranslationImages,
    dataset_batches,
    evaluate_run_translation,
)
from training.export_io import translation_export_io
from training.loop import Runtime, batch_stream, cli_train, image_grid, linear_decay_schedule
from training.losses import GANLoss, gradient_penalty, l1_loss
from training.networks import PatchDiscriminator, UnetGenerator
from training.recipes import ExportSpec
from training.recipes.common import HeldOutPairs, TranslationConfig, gan_loss_field

NAME = "pix2pix"
TRANSLATE_NETS = ("G",)
MAX_DOWNS = 8  # U-Net 256: a 1x1 bottleneck at 256 px


@dataclass
class Config(TranslationConfig):
    # ~ the reference's 200 epochs over facades' 400 training pairs at batch 1
    steps: int = field(default=80_000, metadata={"help": "total optimisation steps"})
    gan_loss: str = gan_loss_field("vanilla")
    direction: str = field(
        default="AtoB",
        metadata={"help": "AtoB or BtoA (facades: BtoA, labels -> photo)", "choices": DIRECTIONS},
    )
    train_phase: str = field(default="train", metadata={"help": "sub-folder with the training pairs"})
    test_phase: str = field(
        default="test", metadata={"help": "sub-folder with held-out pairs (samples, eval)"}
    )
    num_downs: int | None = field(
        default=None, metadata={"help": "U-Net depth (None: log2(crop), at most 8 -> U-Net 256)"}
    )
    dropout: float = field(default=0.5, metadata={"help": "U-Net decoder dropout (the pix2pix noise)"})
    lambda_l1: float = field(default=100.0, metadata={"help": "weight of the L1 reconstruction loss"})

    def __post_init__(self) -> None:
        super().__post_init__()
        downs = unet_depth(self)
        if self.crop_size % 2**downs:
            raise ConfigError(
                f"--size {self.crop_size} is not a multiple of 2**num_downs = {2**downs}; "
                f"use a multiple of {2**downs} or a smaller --num-downs"
            )


def unet_depth(config: Config) -> int:
    if config.num_downs is not None:
        return config.num_downs
    return max(2, min(MAX_DOWNS, int(math.log2(config.crop_size))))


def build_inference_nets(config: Config) -> dict[str, nn.Module]:
    """The U-Net generator."""
    return {"G": UnetGenerator(3, 3, unet_depth(config), config.ngf, config.norm, config.dropout)}


def build_discriminator(config: Config) -> nn.Module:
    # conditional: D sees the input and the (real or generated) output, stacked on channels
    return PatchDiscriminator(6, config.ndf, config.n_layers_d, config.norm, config.spectral_norm)


def build_dataset(config: Config, phase: str, train: bool | None = None) -> PairedImageFolder:
    if not config.data:
        raise ConfigError("no dataset: pass --data DIR (with train/ holding side-by-side AB images)")
    return PairedImageFolder(
        config.data,
        phase=phase,
        direction=config.direction,
        load_size=config.load_size,
        crop_size=config.crop_size,
        flip=config.flip,
        train=train,
    )


def dataset_info(config: Config) -> dict[str, Any]:
    info: dict[str, Any] = {
        **provenance(config.data).as_dict(),
        "path": config.data,
        "direction": config.direction,
        "split": f"{config.train_phase}/ for training, {config.test_phase}/ for test",
    }
    with contextlib.suppress(EmptyFolderError, ValueError):
        info["split_sizes"] = {
            p: len(resolve_paired_files(config.data, p)) for p in (config.train_phase, config.test_phase)
        }
    return info


def export_specs(config: Config) -> dict[str, ExportSpec]:
    src, dst = config.direction.split("to")
    return {
        "G": ExportSpec(
            task="translate",
            method=NAME,
            description=f"pix2pix U-Net generator {src} -> {dst} ({Path(config.data).name or 'paired data'})",
            output_channels=3,
            output_range=(-1.0, 1.0),
            input_channels=3,
            input_range=(-1.0, 1.0),
            multiple_of=2 ** unet_depth(config),
            native_size=config.crop_size,
            dataset=dataset_info(config),
        )
    }


# -- evaluation and export -------------------------------------------------------------------------
def translation_images(config: Config, net: str = "G"):
    """The test pairs (input, ground truth) in ``direction`` and the training pairs' halves for the
    domain judge (a :class:`training.evaluate.TranslationImages`)."""
    cfg = config

    def pairs(phase: str) -> list[tuple[ImageRef, ImageRef]]:
        out = []
        for first, second in resolve_paired_files(cfg.data, phase):
            a, b = (ImageRef(first, "left"), ImageRef(first, "right")) if second is None else (
                ImageRef(first), ImageRef(second))  # fmt: skip
            out.append((b, a) if cfg.direction == "BtoA" else (a, b))
        return out

    test, train = pairs(cfg.test_phase), pairs(cfg.train_phase)
    src, dst = cfg.direction.split("to")
    return TranslationImages(
        inputs=test, targets=[b for _, b in test], judge_a=[a for a, _ in train],
        judge_b=[b for _, b in train], target_domain="B", tag=f"{src}2{dst}",
        split=f"{cfg.test_phase}/ {src} -> {dst} of {Path(cfg.data).name}",
    )  # fmt: skip


def translation_data(config: Config, net: str = "G"):
    """Float batches at the training crop size of the test pairs and training inputs (a
    :class:`training.evaluate.TranslationData`, for export's grid and INT8)."""
    cfg = config

    def paired(phase: str):
        return PairedImageFolder(
            cfg.data, phase=phase, direction=cfg.direction, crop_size=cfg.crop_size, train=False
        )

    return TranslationData(
        test_inputs=lambda limit, bs: dataset_batches(paired(cfg.test_phase), ("A", "B"), bs, limit),
        test_targets=lambda limit, bs: (
            b for (b,) in dataset_batches(paired(cfg.test_phase), ("B",), bs, limit)
        ),
        train_inputs=lambda limit, bs: (
            a for (a,) in dataset_batches(paired(cfg.train_phase), ("A",), bs, limit)
        ),
        split=f"{cfg.test_phase}/ {cfg.direction}",
    )


def evaluate(run, report, options, data: str | None = None, judge: str | None = None) -> str:
    """The generator against the paired ground truth, each image at its own size (see
    :mod:`training.evaluate`)."""
    evaluate_run_translation(run, report, options, TRANSLATE_NETS, translation_images)
    return run.config.data


def export_io(run, net: str, spec: ExportSpec, options):
    return translation_export_io(run.nets[net], spec, translation_data(run.config, net), options)


class Pix2Pix:
    """The training recipe; see :class:`training.loop.Recipe` for the protocol."""

    generators = ("G",)

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.dataset = build_dataset(cfg, cfg.train_phase)
        self.nets = {
            "G": build_inference_nets(cfg)["G"].to(rt.device).train(),
            "D": build_discriminator(cfg).to(rt.device).train(),
        }
        betas = (cfg.beta1, cfg.beta2)
        self.optimizers = {
            "G": torch.optim.Adam(self.nets["G"].parameters(), lr=cfg.lr_g, betas=betas),
            "D": torch.optim.Adam(self.nets["D"].parameters(), lr=cfg.lr_d, betas=betas),
        }
        self.schedulers = {
            k: linear_decay_schedule(o, cfg.steps, cfg.decay_start) for k, o in self.optimizers.items()
        }
        self.gan = GANLoss(cfg.gan_loss, cfg.real_label)
        self.held_out = HeldOutPairs(
            lambda phase: build_dataset(cfg, phase, train=False), (cfg.test_phase, cfg.train_phase)
        )

    def batches(self, start_step: int):
        return batch_stream(self.dataset, self.cfg, self.rt, start_step)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        cfg, rt = self.cfg, self.rt
        g, d = self.nets["G"], self.nets["D"]
        real_a = batch["A"].to(rt.device, non_blocking=True)
        real_b = batch["B"].to(rt.device, non_blocking=True)
        real_ab = torch.cat([real_a, real_b], dim=1)

        with rt.autocast():
            fake_b = g(real_a)
        fake_ab = torch.cat([real_a, fake_b.float()], dim=1)

        # Discriminator: real pairs vs. generated pairs (detached: this step does not train G).
        with rt.autocast():
            loss_d = self.gan.d_loss(d(real_ab), d(fake_ab.detach()))
        loss_d_total = loss_d
        if self.gan.name == "wgan-gp":
            loss_d_total = loss_d + cfg.gp_weight * gradient_penalty(d, real_ab, fake_ab)
        self.optimizers["D"].zero_grad(set_to_none=True)
        rt.backward(loss_d_total)
        rt.step(self.optimizers["D"])

        # Generator: fool D on the pair, and stay close to the target.
        d.requires_grad_(False)
        with rt.autocast():
            real_logits = d(real_ab).detach() if self.gan.needs_real_for_g else None
            loss_gan = self.gan.g_loss(d(fake_ab), real_logits)
            loss_l1 = l1_loss(fake_b, real_b)
            loss_g = loss_gan + cfg.lambda_l1 * loss_l1
        self.optimizers["G"].zero_grad(set_to_none=True)
        rt.backward(loss_g)
        rt.step(self.optimizers["G"])
        d.requires_grad_(True)

        return {"G_gan": loss_gan.detach(), "G_L1": loss_l1.detach(), "D": loss_d.detach()}

    def sample_images(self, generators: dict[str, nn.Module], step: int) -> Tensor:
        """Rows: input, output, target."""
        a, b = (t.to(self.rt.device) for t in self.held_out.images())
        return image_grid([a, generators["G"](a), b])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, Config, aliases={"crop_size": ["--size"]})


def run(args: argparse.Namespace) -> int:
    return cli_train(NAME, Config, Pix2Pix, args)
