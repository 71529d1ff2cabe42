"""CycleGAN: unpaired image-to-image translation (Zhu et al., ICCV 2017).

Two ResNet generators (G_AB: A -> B, G_BA: B -> A) and two 70x70 PatchGANs (D_A judges domain A,
D_B domain B), trained with an adversarial loss (LSGAN), cycle consistency (lambda 10) and identity
(0.5 * lambda). Defaults are the reference implementation's (junyanz/pytorch-CycleGAN-and-pix2pix):
Adam 2e-4 / beta1 0.5, batch 1, load 286 -> crop 256, image pool 50, constant lr then linear decay.

    transfigure train cyclegan --data DIR --size 128 --ngf 32 --blocks 6 --steps 20000 --out runs/s2w
    transfigure train cyclegan --data shared/data/monet_kaggle --a-dir photo_jpg --b-dir monet_jpg ...
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import ConfigError, add_config_arguments
from training.data import UnpairedImageFolder
from training.data.catalog import provenance  # name, source, license of known datasets
from training.data.images import EmptyFolderError
from training.data.unpaired import resolve_unpaired_files
from training.evaluate import (
    ImageRef,
    TranslationData,
    TranslationImages,
    evaluate_run_translation,
    image_file_batches,
)
from training.export_io import translation_export_io
from training.loop import Runtime, batch_stream, cli_train, image_grid, linear_decay_schedule
from training.losses import GANLoss, cycle_consistency_loss, gradient_penalty, identity_loss
from training.networks import NORMS, PatchDiscriminator, ResnetGenerator
from training.networks.guided import GuidedTranslator
from training.networks.resnet import UPSAMPLING
from training.pool import ImagePool
from training.recipes import ExportSpec
from training.recipes.common import HeldOutPairs, TranslationConfig, gan_loss_field

NAME = "cyclegan"
GENERATORS = ("resnet", "guided")
TRANSLATE_NETS = ("G_AB", "G_BA")


@dataclass
class Config(TranslationConfig):
    # ~ the reference's 200 epochs over ~1,000 images per domain at batch 1
    steps: int = field(default=200_000, metadata={"help": "total optimisation steps"})
    gan_loss: str = gan_loss_field("lsgan")
    a_dir: str = field(
        default="", metadata={"help": "domain A folder, relative to --data (default: DATA/trainA)"}
    )
    b_dir: str = field(
        default="", metadata={"help": "domain B folder, relative to --data (default: DATA/trainB)"}
    )
    holdout_every: int = field(
        default=10, metadata={"help": "with --a-dir/--b-dir: every Nth file (by name) is held out for test"}
    )
    generator: str = field(
        default="resnet",
        metadata={
            "help": "resnet: the paper's full-resolution ResNet generator; guided: the ResNet on a "
            "low_size copy, carried to full resolution by a guided filter (identity when untrained, "
            "any input size in near-constant time)",
            "choices": GENERATORS,
        },
    )
    low_size: int = field(default=128, metadata={"help": "guided: side of the network's low-resolution copy"})
    gf_radius: int = field(
        default=1, metadata={"help": "guided: box radius of the guided filter (low-res px)"}
    )
    gf_eps: float = field(default=1e-3, metadata={"help": "guided: guided-filter regulariser"})
    detail: bool = field(
        default=False, metadata={"help": "guided: also add the change the local linear model cannot express"}
    )
    d_size: int | None = field(
        default=None,
        metadata={"help": "discriminators see images resized to this side (None: the training crop)"},
    )
    n_blocks: int = field(default=9, metadata={"help": "ResNet blocks (9 for 256 px, 6 for 128 px)"})
    upsample: str = field(
        default="transposed",
        metadata={
            "help": "generator upsampling: the paper's transposed conv, or resize (nearest x2 + conv: "
            "no checkerboard artefacts)",
            "choices": UPSAMPLING,
        },
    )
    g_norm: str | None = field(
        default=None,
        metadata={
            "help": "the generators' normalisation if not --norm (pixel: per-pixel, pools nothing over space)",
            "choices": NORMS,
        },
    )
    lambda_cycle: float = field(default=10.0, metadata={"help": "weight of the cycle-consistency L1"})
    lambda_identity: float = field(
        default=0.5, metadata={"help": "identity weight, relative to lambda_cycle"}
    )
    pool_size: int = field(default=50, metadata={"help": "image pool of past fakes for D (0: off)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.generator == "guided" and (self.low_size % 4 or self.low_size < 8):
            raise ConfigError(f"--low-size {self.low_size}: must be a multiple of 4, at least 8")
        if self.d_size is not None and self.d_size < 16:
            raise ConfigError(f"--d-size {self.d_size}: the PatchGAN needs at least 16 px")
        if self.generator == "resnet" and self.crop_size % 2**ResnetGenerator.n_downsampling:
            raise ConfigError(f"--size {self.crop_size}: the ResNet generator needs a multiple of 4")
        if bool(self.a_dir) != bool(self.b_dir):
            raise ConfigError("give both --a-dir and --b-dir, or neither")


def build_inference_nets(config: Config) -> dict[str, nn.Module]:
    """The two generators, A -> B and B -> A."""

    def gen() -> nn.Module:
        if config.generator == "guided":
            return GuidedTranslator(
                config.low_size, ngf=config.ngf, n_blocks=config.n_blocks, norm=config.g_norm or config.norm,
                radius=config.gf_radius, eps=config.gf_eps, detail=config.detail, upsample=config.upsample,
            )  # fmt: skip
        return ResnetGenerator(
            3,
            3,
            ngf=config.ngf,
            n_blocks=config.n_blocks,
            norm=config.g_norm or config.norm,
            upsample=config.upsample,
        )

    return {"G_AB": gen(), "G_BA": gen()}


def build_discriminators(config: Config) -> dict[str, nn.Module]:
    def disc() -> PatchDiscriminator:
        return PatchDiscriminator(3, config.ndf, config.n_layers_d, config.norm, config.spectral_norm)

    return {"D_A": disc(), "D_B": disc()}


def build_dataset(config: Config, phase: str = "train", train: bool | None = None) -> UnpairedImageFolder:
    return UnpairedImageFolder(
        config.data or None,
        phase=phase,
        load_size=config.load_size,
        crop_size=config.crop_size,
        flip=config.flip,
        train=train,
        a_dir=config.a_dir or None,
        b_dir=config.b_dir or None,
        holdout_every=config.holdout_every,
    )


def domain_names(config: Config) -> tuple[str, str]:
    if config.a_dir:
        return Path(config.a_dir).name, Path(config.b_dir).name
    return "A", "B"


def dataset_info(config: Config) -> dict[str, Any]:
    """What we know of the training data for the card: path, layout/split rule and split sizes."""
    info: dict[str, Any] = {**provenance(config.data).as_dict(), "path": config.data}
    if config.a_dir:
        info["split"] = (
            f"{config.a_dir} / {config.b_dir}: every {config.holdout_every}th file by name is test"
        )
    else:
        info["split"] = "trainA/trainB for training, testA/testB for test"
    try:
        sizes = {}
        for phase in ("train", "test"):
            a, b = resolve_unpaired_files(
                config.data or None, phase, config.a_dir or None, config.b_dir or None, config.holdout_every
            )
            sizes[f"{phase}A"], sizes[f"{phase}B"] = len(a), len(b)
        info["split_sizes"] = sizes
    except (EmptyFolderError, ValueError):
        pass  # the data may not be on this machine (exporting elsewhere)
    return info


def export_specs(config: Config) -> dict[str, ExportSpec]:
    a, b = domain_names(config)
    guided = config.generator == "guided"
    common = {
        "task": "translate",
        "method": NAME,
        "output_channels": 3,
        "output_range": (-1.0, 1.0),
        "input_channels": 3,
        "input_range": (-1.0, 1.0),
        "multiple_of": 1 if guided else 2**ResnetGenerator.n_downsampling,
        "native_size": config.low_size if guided else config.crop_size,
        "dataset": dataset_info(config),
    }
    return {
        "G_AB": ExportSpec(description=f"CycleGAN generator {a} -> {b}", **common),
        "G_BA": ExportSpec(description=f"CycleGAN generator {b} -> {a}", **common),
    }


# -- evaluation and export -------------------------------------------------------------------------
def translation_images(config: Config, net: str):
    """The test images of ``net`` (G_AB or G_BA) and the training images of both domains for the
    domain judge (a :class:`training.evaluate.TranslationImages`)."""
    cfg = config
    a_name, b_name = domain_names(cfg)

    def files(phase: str) -> tuple[list[ImageRef], list[ImageRef]]:
        a, b = resolve_unpaired_files(cfg.data or None, phase, cfg.a_dir or None, cfg.b_dir or None,
                                      cfg.holdout_every)  # fmt: skip
        return [ImageRef(f) for f in a], [ImageRef(f) for f in b]

    test, train = dict(zip("AB", files("test"), strict=True)), files("train")
    src, dst = ("A", "B") if net == "G_AB" else ("B", "A")
    if cfg.a_dir:
        dirs = {"A": cfg.a_dir, "B": cfg.b_dir}
        split = (f"held-out {src} -> {dst}: every {cfg.holdout_every}th file of {Path(dirs[src]).name} "
                 f"-> of {Path(dirs[dst]).name}")  # fmt: skip
    else:
        split = f"test{src} -> test{dst} of {Path(cfg.data).name}"
    names = {"A": a_name, "B": b_name}
    return TranslationImages(
        inputs=[(r,) for r in test[src]], targets=test[dst], judge_a=train[0], judge_b=train[1],
        target_domain=dst, tag=f"{names[src]}2{names[dst]}", split=split,
    )  # fmt: skip


def translation_data(config: Config, net: str):
    """Float batches at the training crop size of ``net``'s test inputs/targets and training inputs
    (a :class:`training.evaluate.TranslationData`, for export's grid and INT8)."""
    cfg, crop = config, config.crop_size

    def files(phase: str) -> tuple[list[Path], list[Path]]:
        return resolve_unpaired_files(cfg.data or None, phase, cfg.a_dir or None, cfg.b_dir or None,
                                      cfg.holdout_every)  # fmt: skip

    (test_a, test_b), (train_a, train_b) = files("test"), files("train")
    src, dst, train_src = (test_a, test_b, train_a) if net == "G_AB" else (test_b, test_a, train_b)
    return TranslationData(
        test_inputs=lambda limit, bs: ((x,) for x in image_file_batches(src, crop, bs, limit)),
        test_targets=lambda limit, bs: image_file_batches(dst, crop, bs, limit),
        train_inputs=lambda limit, bs: image_file_batches(train_src, crop, bs, limit),
        split="testA -> testB" if net == "G_AB" else "testB -> testA",
    )


def evaluate(run, report, options, data: str | None = None, judge: str | None = None) -> str:
    """Both directions, each image at its own size (see :mod:`training.evaluate`)."""
    evaluate_run_translation(run, report, options, TRANSLATE_NETS, translation_images)
    return run.config.data


def export_io(run, net: str, spec: ExportSpec, options):
    return translation_export_io(run.nets[net], spec, translation_data(run.config, net), options)


def _requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        net.requires_grad_(flag)


class CycleGAN:
    """The training recipe; see :class:`training.loop.Recipe` for the protocol."""

    generators = ("G_AB", "G_BA")

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.dataset = build_dataset(cfg, "train")
        nets = {**build_inference_nets(cfg), **build_discriminators(cfg)}
        self.nets = {k: v.to(rt.device).train() for k, v in nets.items()}
        betas = (cfg.beta1, cfg.beta2)
        g_params = itertools.chain(self.nets["G_AB"].parameters(), self.nets["G_BA"].parameters())
        d_params = itertools.chain(self.nets["D_A"].parameters(), self.nets["D_B"].parameters())
        self.optimizers = {
            "G": torch.optim.Adam(g_params, lr=cfg.lr_g, betas=betas),
            "D": torch.optim.Adam(d_params, lr=cfg.lr_d, betas=betas),
        }
        self.schedulers = {
            k: linear_decay_schedule(o, cfg.steps, cfg.decay_start) for k, o in self.optimizers.items()
        }
        self.gan = GANLoss(cfg.gan_loss, cfg.real_label)
        self.pool_A, self.pool_B = ImagePool(cfg.pool_size), ImagePool(cfg.pool_size)
        self.held_out = HeldOutPairs(
            lambda phase: build_dataset(cfg, phase, train=False),
            ("test", "train"),
            size=lambda ds: min(len(ds.files_a), len(ds.files_b)),
        )

    # -- data -----------------------------------------------------------------------------------
    def batches(self, start_step: int):
        return batch_stream(self.dataset, self.cfg, self.rt, start_step)

    # -- one step -------------------------------------------------------------------------------
    def _d_view(self, x: Tensor) -> Tensor:
        """What the discriminators see: the image, or an antialiased copy at ``d_size``."""
        s = self.cfg.d_size
        if s is None or x.shape[-1] == s and x.shape[-2] == s:
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    def _g_adv(self, disc: nn.Module, fake: Tensor, real: Tensor) -> Tensor:
        real_logits = disc(self._d_view(real)).detach() if self.gan.needs_real_for_g else None
        return self.gan.g_loss(disc(self._d_view(fake)), real_logits)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        cfg, rt, n = self.cfg, self.rt, self.nets
        g_ab, g_ba, d_a, d_b = n["G_AB"], n["G_BA"], n["D_A"], n["D_B"]
        real_a = batch["A"].to(rt.device, non_blocking=True)
        real_b = batch["B"].to(rt.device, non_blocking=True)

        # Generators: fool both discriminators, and come back where they started.
        _requires_grad([d_a, d_b], False)
        with rt.autocast():
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)
            rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
            loss_gan = self._g_adv(d_b, fake_b, real_b) + self._g_adv(d_a, fake_a, real_a)
            loss_cycle = cfg.lambda_cycle * (
                cycle_consistency_loss(real_a, rec_a) + cycle_consistency_loss(real_b, rec_b)
            )
            loss_idt = torch.zeros((), device=rt.device)
            if cfg.lambda_identity > 0:
                weight = cfg.lambda_identity * cfg.lambda_cycle
                loss_idt = weight * (
                    identity_loss(real_b, g_ab(real_b)) + identity_loss(real_a, g_ba(real_a))
                )
            loss_g = loss_gan + loss_cycle + loss_idt
        self.optimizers["G"].zero_grad(set_to_none=True)
        rt.backward(loss_g)
        rt.step(self.optimizers["G"])

        # Discriminators: real vs. a mix of current and past fakes (the pool).
        _requires_grad([d_a, d_b], True)
        pooled_b = self._d_view(self.pool_B.query(fake_b.float()))
        pooled_a = self._d_view(self.pool_A.query(fake_a.float()))
        real_a, real_b = self._d_view(real_a), self._d_view(real_b)
        with rt.autocast():
            loss_d_b = self.gan.d_loss(d_b(real_b), d_b(pooled_b))
            loss_d_a = self.gan.d_loss(d_a(real_a), d_a(pooled_a))
        loss_d = loss_d_a + loss_d_b
        if self.gan.name == "wgan-gp":  # the penalty's double backward stays in fp32
            loss_d = loss_d + cfg.gp_weight * (
                gradient_penalty(d_b, real_b, pooled_b) + gradient_penalty(d_a, real_a, pooled_a)
            )
        self.optimizers["D"].zero_grad(set_to_none=True)
        rt.backward(loss_d)
        rt.step(self.optimizers["D"])

        return {
            "G_gan": loss_gan.detach(),
            "G_cycle": loss_cycle.detach(),
            "G_idt": loss_idt.detach(),
            "D_A": loss_d_a.detach(),
            "D_B": loss_d_b.detach(),
        }

    # -- samples and extra state ----------------------------------------------------------------
    def sample_images(self, generators: dict[str, nn.Module], step: int) -> Tensor:
        """Rows: A, G_AB(A), G_BA(G_AB(A)), B, G_BA(B), G_AB(G_BA(B))."""
        a, b = (t.to(self.rt.device) for t in self.held_out.images())
        g_ab, g_ba = generators["G_AB"], generators["G_BA"]
        fake_b, fake_a = g_ab(a), g_ba(b)
        return image_grid([a, fake_b, g_ba(fake_b), b, fake_a, g_ab(fake_a)])

    def state_dict(self) -> dict[str, Any]:
        return {"pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool_A.load_state_dict(state["pool_A"], self.rt.device)
        self.pool_B.load_state_dict(state["pool_B"], self.rt.device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, Config, aliases={"crop_size": ["--size"], "n_blocks": ["--blocks"]})


def run(args: argparse.Namespace) -> int:
    return cli_train(NAME, Config, CycleGAN, args)
