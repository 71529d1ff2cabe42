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
from training.diffaug import diff_augment, parse_policy
from training.evaluate import (
    ImageRef,
    TranslationData,
    TranslationImages,
    evaluate_run_translation,
    image_file_batches,
)
from training.export_io import translation_export_io
from training.loop import Runtime, batch_stream, cli_train, image_grid, linear_decay_schedule
from training.losses import (
    GANLoss,
    channel_statistics,
    cycle_consistency_loss,
    feature_content_loss,
    gradient_penalty,
    identity_loss,
    sliced_wasserstein_loss,
    statistics_loss,
)
from training.networks import NORMS, PatchDiscriminator, ResnetGenerator
from training.networks.efficientnet_lite import FEATURE_CHANNELS, WEIGHTS_PROVENANCE, Lite0Features
from training.networks.guided import GuidedTranslator
from training.networks.projected import ProjectedDiscriminator
from training.networks.resnet import UPSAMPLING
from training.pool import ImagePool
from training.recipes import ExportSpec
from training.recipes.common import HeldOutPairs, TranslationConfig, gan_loss_field

NAME = "cyclegan"
GENERATORS = ("resnet", "guided")
DISCRIMINATORS = ("patch", "projected")
STYLE_LOSSES = ("sliced", "moments")
CONTENT_LAYERS = (2,)  # Lite0 stage 5 (112 channels, 1/16 of the side): what is where, not how it looks
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
    gf_max_slope: float = field(
        default=0.0,
        metadata={"help": "guided: bound on the guided filter's slopes, m * tanh(a / m); below 1 the local gain "
                  "stays positive, so no colour channel's contrast inverts (0: unbounded)"},
    )  # fmt: skip
    detail: bool = field(
        default=False, metadata={"help": "guided: also add the change the local linear model cannot express"}
    )
    g_padding: str = field(
        default="zeros",
        metadata={"help": "padding of the generator's downsampling convs: zeros (the paper's; tells the network "
                  "where the borders are) or reflect (no position signal at the borders)",
                  "choices": ("zeros", "reflect")},
    )  # fmt: skip
    texture: int = field(
        default=0,
        metadata={"help": "guided: channels of a texture head that paints a residual image at --texture-size "
                  "(snow grain, brush strokes: what a colour change cannot express); 0: none"},
    )  # fmt: skip
    texture_size: int = field(
        default=256, metadata={"help": "guided: side of the square copy the texture head works on"}
    )
    texture_dilation: str = field(
        default="growing",
        metadata={"help": "guided: the texture head's residual blocks dilate 1, 2, 4, ... (growing: a wider "
                  "field) or not at all (plain: no gridding pattern)", "choices": ("growing", "plain")},
    )  # fmt: skip
    lr_texture: float | None = field(
        default=None,
        metadata={"help": "guided: learning rate of the texture head's own Adam group (None: --lr-g); a "
                  "higher one moves the domain judges faster and costs FID"},
    )  # fmt: skip
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
    discriminator: str = field(
        default="patch",
        metadata={
            "help": "patch: the paper's 70x70 PatchGAN on pixels, trained from scratch; projected: patch "
            "heads on frozen ImageNet EfficientNet-Lite0 features behind fixed random projections "
            "(Projected GAN)",
            "choices": DISCRIMINATORS,
        },
    )
    lambda_style: float = field(
        default=0.0,
        metadata={"help": "weight of the feature-statistics loss: per-channel mean/std of the output's frozen "
                  "Lite0 features against those of the target domain's training images (0: off)"},
    )  # fmt: skip
    lambda_content: float = field(
        default=0.0,
        metadata={"help": "weight of the feature content loss: the output's deep Lite0 features against the "
                  "input's (0: off)"},
    )  # fmt: skip
    style_loss: str = field(
        default="sliced",
        metadata={
            "help": "sliced: sliced Wasserstein distance between the output's and a real target image's "
            "feature distributions (robust to blobs); moments: per-channel mean/std against the "
            "target domain's average (AdaIN-style)",
            "choices": STYLE_LOSSES,
        },
    )
    style_softmax: bool = field(
        default=False,
        metadata={"help": "feature statistics of a softmax over channels (Wang et al., CVPR 2021)"},
    )
    d_augment: str = field(
        default="",
        metadata={
            "help": "DiffAugment ops on everything a discriminator sees, e.g. translation,cutout (empty: none)"
        },
    )

    @property
    def uses_features(self) -> bool:
        """Whether training needs the frozen pretrained feature network."""
        return self.discriminator == "projected" or self.lambda_style > 0 or self.lambda_content > 0

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_policy(self.d_augment)
        except ValueError as e:
            raise ConfigError(f"--d-augment {self.d_augment!r}: {e}") from None
        if self.lambda_style < 0 or self.lambda_content < 0:
            raise ConfigError("--lambda-style and --lambda-content must be >= 0")
        if self.discriminator == "projected" and self.gan_loss == "wgan-gp":
            raise ConfigError("--discriminator projected: use lsgan, hinge, vanilla or ragan, not wgan-gp")
        if self.uses_features and (self.d_size or self.crop_size) < 32:
            raise ConfigError("the feature network needs images of at least 32 px (--d-size)")
        if self.generator == "guided" and (self.low_size % 4 or self.low_size < 8):
            raise ConfigError(f"--low-size {self.low_size}: must be a multiple of 4, at least 8")
        if self.d_size is not None and self.d_size < 16:
            raise ConfigError(f"--d-size {self.d_size}: the PatchGAN needs at least 16 px")
        if self.generator == "resnet" and self.crop_size % 2**ResnetGenerator.n_downsampling:
            raise ConfigError(f"--size {self.crop_size}: the ResNet generator needs a multiple of 4")
        if self.lr_texture is not None and (self.lr_texture <= 0 or not self.texture):
            raise ConfigError(f"--lr-texture {self.lr_texture}: needs --texture and a rate > 0")
        if bool(self.a_dir) != bool(self.b_dir):
            raise ConfigError("give both --a-dir and --b-dir, or neither")


def build_inference_nets(config: Config) -> dict[str, nn.Module]:
    """The two generators, A -> B and B -> A."""

    def gen() -> nn.Module:
        if config.generator == "guided":
            return GuidedTranslator(
                config.low_size, ngf=config.ngf, n_blocks=config.n_blocks, norm=config.g_norm or config.norm,
                radius=config.gf_radius, eps=config.gf_eps, detail=config.detail, upsample=config.upsample,
                max_slope=config.gf_max_slope, texture=config.texture, texture_size=config.texture_size,
                padding=config.g_padding, texture_dilated=config.texture_dilation == "growing",
            )  # fmt: skip
        return ResnetGenerator(
            3,
            3,
            ngf=config.ngf,
            n_blocks=config.n_blocks,
            norm=config.g_norm or config.norm,
            upsample=config.upsample,
            padding=config.g_padding,
        )

    return {"G_AB": gen(), "G_BA": gen()}


def build_discriminators(config: Config) -> dict[str, nn.Module]:
    def disc() -> nn.Module:
        if config.discriminator == "projected":
            return ProjectedDiscriminator(FEATURE_CHANNELS, ndf=config.ndf, seed=config.seed)
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
        "pretrained": [dict(WEIGHTS_PROVENANCE)] if config.uses_features else [],
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


def _as_list(logits: Tensor | list[Tensor]) -> list[Tensor]:
    return logits if isinstance(logits, list) else [logits]


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
        d_params = itertools.chain(self.nets["D_A"].parameters(), self.nets["D_B"].parameters())
        self.optimizers = {
            "G": torch.optim.Adam(self._g_param_groups(), lr=cfg.lr_g, betas=betas),
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
        self.d_ops = parse_policy(cfg.d_augment)
        self.features: Lite0Features | None = None
        self.domain_stats: dict[str, list[tuple[Tensor, Tensor]]] = {}
        if cfg.uses_features:
            self.features = Lite0Features().to(rt.device)
            if cfg.lambda_style > 0 and cfg.style_loss == "moments":
                self.domain_stats = {
                    "A": self._domain_statistics(self.dataset.files_a),
                    "B": self._domain_statistics(self.dataset.files_b),
                }

    def _g_param_groups(self) -> list[dict[str, Any]]:
        """Both generators' parameters; a texture head in its own group at ``lr_texture``."""
        gens = [self.nets["G_AB"], self.nets["G_BA"]]
        head = [p for g in gens if getattr(g, "texture", None) is not None for p in g.texture.parameters()]
        ids = {id(p) for p in head}
        rest = [p for g in gens for p in g.parameters() if id(p) not in ids]
        groups: list[dict[str, Any]] = [{"params": rest}]
        if head:
            groups.append({"params": head, "lr": self.cfg.lr_texture or self.cfg.lr_g})
        return groups

    # -- data -----------------------------------------------------------------------------------
    def batches(self, start_step: int):
        return batch_stream(self.dataset, self.cfg, self.rt, start_step)

    # -- the feature network ----------------------------------------------------------------------
    @torch.no_grad()
    def _domain_statistics(self, files: list[Path], batch_size: int = 16) -> list[tuple[Tensor, Tensor]]:
        """The mean over a domain's training images of their per-image feature statistics (what the
        statistics loss pulls outputs towards): every image once, at the discriminators' view."""
        sums: list[list[Tensor]] | None = None
        n = 0
        for x in image_file_batches(files, self.cfg.crop_size, batch_size, None):
            stats = channel_statistics(self._style_view(self.features(self._d_view(x.to(self.rt.device)))))
            flat = [t.sum(0, keepdim=True) for pair in stats for t in pair]
            sums = flat if sums is None else [a + b for a, b in zip(sums, flat, strict=True)]
            n += len(x)
        means = [t / n for t in sums]
        return [(means[i], means[i + 1]) for i in range(0, len(means), 2)]

    def _style_view(self, feats: list[Tensor]) -> list[Tensor]:
        """Features as the style loss sees them: a softmax over channels at every position with
        ``style_softmax``, which makes residual networks' low-entropy activations usable for style
        (Wang et al., CVPR 2021)."""
        return [f.float().softmax(1) for f in feats] if self.cfg.style_softmax else feats

    def _style_loss(self, fake: list[Tensor], real: list[Tensor], domain: str) -> Tensor:
        """How far the outputs' feature distribution is from the target domain's (``real``: features
        of this step's real images of that domain)."""
        fake, real = self._style_view(fake), self._style_view(real)
        if self.cfg.style_loss == "sliced":
            return sliced_wasserstein_loss(fake, real)
        return statistics_loss(channel_statistics(fake), self.domain_stats[domain])

    def _feats(self, x: Tensor) -> list[Tensor]:
        return self.features(self._d_view(x))

    def _d_logits(
        self, disc: nn.Module, x: Tensor, feats: list[Tensor] | None = None
    ) -> Tensor | list[Tensor]:
        """The discriminator on an image: pixels (PatchGAN) or the image's frozen features (projected;
        ``feats`` when they were computed already for an unaugmented view)."""
        if self.d_ops:
            x, feats = diff_augment(self._d_view(x), self.d_ops), None
        else:
            x = self._d_view(x)
        if self.cfg.discriminator == "projected":
            return disc(feats if feats is not None else self.features(x))
        return disc(x)

    # -- one step -------------------------------------------------------------------------------
    def _d_view(self, x: Tensor) -> Tensor:
        """What the discriminators see: the image, or an antialiased copy at ``d_size``."""
        s = self.cfg.d_size
        if s is None or x.shape[-1] == s and x.shape[-2] == s:
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    def _g_adv(self, disc: nn.Module, fake: Tensor, real: Tensor, fake_f=None, real_f=None) -> Tensor:
        fake_l = _as_list(self._d_logits(disc, fake, fake_f))
        if not self.gan.needs_real_for_g:
            return sum(self.gan.g_loss(f) for f in fake_l) / len(fake_l)
        real_l = [r.detach() for r in _as_list(self._d_logits(disc, real, real_f))]
        return sum(self.gan.g_loss(f, r) for f, r in zip(fake_l, real_l, strict=True)) / len(fake_l)

    def _d_loss(self, disc: nn.Module, real: Tensor, fake: Tensor, real_f=None) -> Tensor:
        real_l, fake_l = _as_list(self._d_logits(disc, real, real_f)), _as_list(self._d_logits(disc, fake))
        return sum(self.gan.d_loss(r, f) for r, f in zip(real_l, fake_l, strict=True)) / len(real_l)

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
            feats: dict[str, Any] = {}
            if self.features is not None:  # one pass per image, shared by D and the feature losses
                with torch.no_grad():
                    feats["real_a"], feats["real_b"] = self._feats(real_a), self._feats(real_b)
                feats["fake_a"], feats["fake_b"] = self._feats(fake_a), self._feats(fake_b)
            loss_gan = self._g_adv(
                d_b, fake_b, real_b, feats.get("fake_b"), feats.get("real_b")
            ) + self._g_adv(d_a, fake_a, real_a, feats.get("fake_a"), feats.get("real_a"))
            loss_style = torch.zeros((), device=rt.device)
            if cfg.lambda_style > 0:
                loss_style = cfg.lambda_style * (
                    self._style_loss(feats["fake_b"], feats["real_b"], "B")
                    + self._style_loss(feats["fake_a"], feats["real_a"], "A")
                )
            loss_content = torch.zeros((), device=rt.device)
            if cfg.lambda_content > 0:
                loss_content = cfg.lambda_content * (
                    feature_content_loss(feats["fake_b"], feats["real_a"], CONTENT_LAYERS)
                    + feature_content_loss(feats["fake_a"], feats["real_b"], CONTENT_LAYERS)
                )
            loss_cycle = cfg.lambda_cycle * (
                cycle_consistency_loss(real_a, rec_a) + cycle_consistency_loss(real_b, rec_b)
            )
            loss_idt = torch.zeros((), device=rt.device)
            if cfg.lambda_identity > 0:
                weight = cfg.lambda_identity * cfg.lambda_cycle
                loss_idt = weight * (
                    identity_loss(real_b, g_ab(real_b)) + identity_loss(real_a, g_ba(real_a))
                )
            loss_g = loss_gan + loss_cycle + loss_idt + loss_style + loss_content
        self.optimizers["G"].zero_grad(set_to_none=True)
        rt.backward(loss_g)
        rt.step(self.optimizers["G"])

        # Discriminators: real vs. a mix of current and past fakes (the pool).
        _requires_grad([d_a, d_b], True)
        pooled_b = self.pool_B.query(fake_b.float().detach())
        pooled_a = self.pool_A.query(fake_a.float().detach())
        with rt.autocast():
            loss_d_b = self._d_loss(d_b, real_b, pooled_b, feats.get("real_b"))
            loss_d_a = self._d_loss(d_a, real_a, pooled_a, feats.get("real_a"))
        loss_d = loss_d_a + loss_d_b
        if self.gan.name == "wgan-gp":  # the penalty's double backward stays in fp32
            real_a, real_b = self._d_view(real_a), self._d_view(real_b)
            pooled_a, pooled_b = self._d_view(pooled_a), self._d_view(pooled_b)
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
            **({"G_style": loss_style.detach()} if cfg.lambda_style > 0 else {}),
            **({"G_content": loss_content.detach()} if cfg.lambda_content > 0 else {}),
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
