"""GAN super-resolution, x4 by default (`transfigure train srgan`), in the two phases of the SR literature.

1. ``--phase psnr``: the generator alone, L1 loss (EDSR/ESRGAN pre-training). The result is a
   PSNR-oriented model and ships on its own.
2. ``--phase gan --init runs/sr_psnr``: start from the PSNR model and fine-tune adversarially
   (ESRGAN): relativistic average GAN loss (``--gan-loss ragan``) against a spectral-norm VGG-style
   discriminator, plus L1 to stay faithful, plus optional discriminator feature matching
   (``--fm-weight``). There is **no perceptual (VGG) loss**: no pretrained VGG weights are
   available offline, and we do not ship a loss whose weights we cannot account for. The GAN
   weight is accordingly larger than ESRGAN's 5e-3 (which is relative to a perceptual term).

Networks (``training/networks/sr.py``): the SRVGG-compact generator (fully convolutional,
PixelShuffle, multiple_of 1, values in [0, 1]) and the SN discriminator on HR patches.
Data (``training/data/sr.py``): random HR crops of ``--lr-patch * --scale`` px from ``--data``, LR by
PIL bicubic on uint8 made in code (the same function the metrics use), flips/rot90;
``--realworld`` adds blur/noise/JPEG to the LR side.

``--val-data DIR`` (e.g. Set5) is scored at every sample step with the protocol of
``training/quality.py`` (Y-channel PSNR/SSIM, borders shaved): the model and the bicubic baseline
through the same code path; both land in TensorBoard under ``val/``. The sample grid has one row per
preview image: LR (nearest-upsampled) | bicubic | SR | HR.

Exported net ``G``: ``image`` N x 3 x h x w in [0, 1] -> ``output`` N x 3 x (scale h) x (scale w)
in [0, 1].
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from training.config import ConfigError, add_config_arguments
from training.data.catalog import provenance
from training.data.images import list_images
from training.data.sr import SRPatches, preview_pairs
from training.evaluate import evaluate_upscale
from training.export_io import upscale_export_io
from training.loop import Runtime, batch_stream, cli_train, image_grid, linear_decay_schedule, to_device
from training.losses import GANLoss, gradient_penalty, l1_loss
from training.networks.sr import SCALES, CompactSRNet, SRDiscriminator
from training.quality import bicubic_upscaler, evaluate_upscaler, torch_upscaler
from training.recipes import ExportSpec, find_checkpoint
from training.recipes.common import AdversarialConfig, gan_loss_field

NAME = "srgan"
PHASES = ("psnr", "gan")
DEFAULT_LR_G = {"psnr": 2e-4, "gan": 1e-4}  # ESRGAN's two phases
PREVIEW_IMAGES = 4
VALUE_RANGE = (0.0, 1.0)


@dataclass
class Config(AdversarialConfig):
    data: str = field(default="", metadata={"help": "folder of HR training images (e.g. T91)"})
    val_data: str = field(
        default="", metadata={"help": "folder of held-out HR images scored at every sample step (e.g. Set5)"}
    )
    phase: str = field(
        default="psnr",
        metadata={"help": "psnr: L1 pre-training; gan: adversarial fine-tuning", "choices": PHASES},
    )
    init: str = field(
        default="", metadata={"help": "gan phase: start G from this run folder or checkpoint (the psnr run)"}
    )
    scale: int = field(default=4, metadata={"help": "upscaling factor", "choices": SCALES})
    lr_patch: int = field(default=32, metadata={"help": "LR training patch (HR patch = this x scale)"})
    num_feat: int = field(default=64, metadata={"help": "generator channels"})
    num_conv: int = field(default=16, metadata={"help": "generator 3x3 convs at LR resolution"})
    ndf: int = field(default=64, metadata={"help": "discriminator width (gan phase)"})
    realworld: bool = field(default=False, metadata={"help": "add blur/noise/JPEG to the LR inputs"})
    degradation_strength: float = field(
        default=1.0, metadata={"help": "scale of the --realworld degradations"}
    )
    lr_g: float | None = field(
        default=None, metadata={"help": "generator learning rate (None: 2e-4 for psnr, 1e-4 for gan)"}
    )
    lr_d: float = field(default=1e-4, metadata={"help": "discriminator learning rate (gan phase)"})
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.99, metadata={"help": "Adam beta2"})
    gan_loss: str = gan_loss_field("ragan", "adversarial loss (gan phase)")
    l1_weight: float = field(default=1.0, metadata={"help": "weight of the L1 pixel loss"})
    gan_weight: float = field(default=0.05, metadata={"help": "weight of the adversarial loss (gan phase)"})
    fm_weight: float = field(
        default=0.0, metadata={"help": "weight of discriminator feature matching (gan phase; 0: off)"}
    )
    # loop defaults that differ for this recipe
    steps: int = field(default=20_000, metadata={"help": "total optimisation steps (iterations)"})
    batch_size: int = field(default=16, metadata={"help": "patches per step and process"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA of generator weights (0: off)"})


# ------------------------------------------------------------------------------------------------
# nets
# ------------------------------------------------------------------------------------------------
def build_inference_nets(config: Config) -> dict[str, nn.Module]:
    """The upscaler."""
    return {"G": CompactSRNet(config.scale, num_feat=config.num_feat, num_conv=config.num_conv)}


def export_specs(config: Config) -> dict[str, ExportSpec]:
    sizes: dict[str, int] = {}
    for split, folder in (("train", config.data), ("val", config.val_data)):
        if folder and Path(folder).is_dir():
            sizes[split] = len(list_images(folder))
    what = "PSNR-oriented (L1)" if config.phase == "psnr" else f"GAN fine-tuned ({config.gan_loss} + L1)"
    return {
        "G": ExportSpec(
            task="upscale",
            method="srgan",
            description=f"x{config.scale} super-resolution, {what}; SRVGG-compact generator "
            f"({config.num_conv} convs x {config.num_feat} channels + PixelShuffle)"
            + (", trained with real-world degradations" if config.realworld else "")
            + ".",
            input_channels=3,
            input_range=VALUE_RANGE,
            output_channels=3,
            output_range=VALUE_RANGE,
            multiple_of=1,
            native_size=config.lr_patch,
            scale=config.scale,
            dataset={**provenance(config.data).as_dict(), "split_sizes": sizes} if config.data else {},
        )
    }


# ------------------------------------------------------------------------------------------------
# evaluation and export
# ------------------------------------------------------------------------------------------------
def with_data(config: Config, data: str) -> Config:
    """Evaluate's and export's ``--data`` names HR test images (e.g. Set5), not the training data."""
    return config


def evaluate(run, report, options, data: str | None = None, judge: str | None = None) -> str:
    """PSNR/SSIM against bicubic on the HR test images of ``--data`` (default: the run's ``--val-data``)."""
    hr_dir = data or run.config.val_data
    if not hr_dir:
        raise ValueError("srgan: pass --data DIR, a folder of HR test images (e.g. shared/data/Set5)")
    evaluate_upscale(run, report, options, hr_dir, export_specs(run.config)["G"])
    return data or ""


def export_io(run, net: str, spec: ExportSpec, options):
    """Grid and INT8 PSNR on ``--data`` (default: ``--val-data``), calibration on the training images."""
    hr_dir = options.data or run.config.val_data
    return upscale_export_io(run.nets[net], spec, hr_dir, run.config.data, options)


def load_init(net: nn.Module, init: str | Path, config: Config) -> None:
    """Load G from another srgan run (its EMA weights when present), checking the architecture."""
    path = find_checkpoint(init)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("recipe") != NAME:
        raise ConfigError(
            f"--init {init}: a '{ckpt.get('recipe')}' run; give the folder of a `train srgan` run"
        )
    theirs = ckpt["config"]
    for key in ("scale", "num_feat", "num_conv"):
        if theirs.get(key) != getattr(config, key):
            raise ConfigError(
                f"--init {init}: that run has {key}={theirs.get(key)}, this one {getattr(config, key)}; "
                f"pass --{key.replace('_', '-')} {theirs.get(key)} to fine-tune it"
            )
    state = (ckpt.get("ema") or {}).get("G") or ckpt["nets"]["G"]
    net.load_state_dict(state)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
class SRGANRecipe:
    def __init__(self, cfg: Config, rt: Runtime) -> None:
        if not cfg.data:
            raise ConfigError("no training data: pass --data FOLDER of HR images (e.g. T91)")
        self.cfg, self.rt = cfg, rt
        self.gan_phase = cfg.phase == "gan"
        self.dataset = SRPatches(cfg.data, cfg.scale, cfg.lr_patch, cfg.realworld, cfg.degradation_strength)
        dev = rt.device
        self.G = build_inference_nets(cfg)["G"].to(dev)
        resuming = cfg.resume and (Path(cfg.out) / "checkpoints" / "last.pt").is_file()
        if cfg.init and not resuming:  # on resume the checkpoint holds the weights
            load_init(self.G, cfg.init, cfg)
        elif self.gan_phase and not cfg.init:
            tqdm.write(
                "warning: --phase gan without --init starts the GAN from scratch; pre-train with --phase psnr"
            )
        lr_g = cfg.lr_g if cfg.lr_g is not None else DEFAULT_LR_G[cfg.phase]
        betas = (cfg.beta1, cfg.beta2)
        opt_g = torch.optim.Adam(self.G.parameters(), lr=lr_g, betas=betas)
        self.nets: dict[str, nn.Module] = {"G": self.G}
        self.optimizers = {"G": opt_g}
        self.schedulers = {"G": linear_decay_schedule(opt_g, cfg.steps)}
        if self.gan_phase:
            self.D = SRDiscriminator(3, cfg.ndf).to(dev)
            opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
            self.nets["D"], self.optimizers["D"] = self.D, opt_d
            self.schedulers["D"] = linear_decay_schedule(opt_d, cfg.steps)
            self.gan = GANLoss(cfg.gan_loss, cfg.real_label)
        self.generators = ("G",)
        preview_dir = cfg.val_data or cfg.data
        self.preview = preview_pairs(preview_dir, cfg.scale, cfg.lr_patch * cfg.scale, PREVIEW_IMAGES)
        self._val_bicubic: dict[str, float] | None = None
        self._writer: Any = None

    def batches(self, start_step: int):
        return batch_stream(self.dataset, self.cfg, self.rt, start_step)

    def train_step(self, batch: Any, step: int) -> dict[str, Tensor]:
        lr, hr = to_device(batch, self.rt.device)
        if not self.gan_phase:
            return self._psnr_step(lr, hr)
        return self._gan_step(lr, hr)

    def _psnr_step(self, lr: Tensor, hr: Tensor) -> dict[str, Tensor]:
        with self.rt.autocast():
            sr = self.G(lr)
        loss = self.cfg.l1_weight * l1_loss(sr, hr)
        opt = self.optimizers["G"]
        opt.zero_grad(set_to_none=True)
        self.rt.backward(loss)
        self.rt.step(opt)
        return {"G_l1": loss.detach(), "train_psnr_rgb": _psnr_rgb(sr.detach(), hr)}

    def _gan_step(self, lr: Tensor, hr: Tensor) -> dict[str, Tensor]:
        cfg, rt, opt_g, opt_d = self.cfg, self.rt, self.optimizers["G"], self.optimizers["D"]
        # generator: L1 + relativistic adversarial term (+ feature matching)
        self.D.requires_grad_(False)
        with rt.autocast():
            sr = self.G(lr)
            fake_logits, fake_feats = self.D(sr, return_features=True)
            with torch.no_grad():
                real_logits, real_feats = self.D(hr, return_features=True)
        l1 = l1_loss(sr, hr)
        adv = self.gan.g_loss(fake_logits, real_logits)
        loss_g = cfg.l1_weight * l1 + cfg.gan_weight * adv
        metrics = {"G_l1": l1.detach(), "G_adv": adv.detach()}  # tensors: no GPU sync per step
        if cfg.fm_weight > 0:
            fm = sum(l1_loss(f, r) for f, r in zip(fake_feats, real_feats, strict=True)) / len(fake_feats)
            loss_g = loss_g + cfg.fm_weight * fm
            metrics["G_fm"] = fm.detach()
        opt_g.zero_grad(set_to_none=True)
        rt.backward(loss_g)
        rt.step(opt_g)
        self.D.requires_grad_(True)

        # discriminator: real HR vs the (detached) SR output
        with rt.autocast():
            loss_d = self.gan.d_loss(self.D(hr), self.D(sr.detach()))
        if self.gan.name == "wgan-gp":
            loss_d = loss_d + cfg.gp_weight * gradient_penalty(self.D, hr, sr.detach().float())
        opt_d.zero_grad(set_to_none=True)
        rt.backward(loss_d)
        rt.step(opt_d)
        metrics["D_loss"] = loss_d.detach()
        metrics["train_psnr_rgb"] = _psnr_rgb(sr.detach(), hr)
        return metrics

    # -- sample grid and validation ---------------------------------------------------------------
    def sample_images(self, generators: dict[str, nn.Module], step: int) -> Tensor:
        g = generators["G"]
        lr, bicubic, hr = self.preview
        sr = g(lr.to(self.rt.device)).float().cpu().clamp(0, 1)
        nearest = F.interpolate(lr, scale_factor=self.cfg.scale, mode="nearest")
        rows = [torch.stack([nearest[i], bicubic[i], sr[i], hr[i]]) for i in range(len(lr))]
        if self.cfg.val_data:
            self._validate(g, step)
        return image_grid(rows, VALUE_RANGE)

    def _validate(self, g: nn.Module, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # The loop has no evaluation hook, so the recipe logs its own scalars next to the loop's.
        if self._writer is None:
            self._writer = SummaryWriter(str(Path(self.cfg.out) / "tb"))
        if self._val_bicubic is None:
            self._val_bicubic = evaluate_upscaler(
                bicubic_upscaler(self.cfg.scale), self.cfg.val_data, self.cfg.scale
            ).mean
        model = evaluate_upscaler(
            torch_upscaler(g, str(self.rt.device)), self.cfg.val_data, self.cfg.scale
        ).mean
        for key, value in model.items():
            self._writer.add_scalar(f"val/{key}", value, step)
            self._writer.add_scalar(f"val/{key}_bicubic", self._val_bicubic[key], step)
        self._writer.flush()
        tqdm.write(
            f"step {step}: val PSNR-Y {model['psnr_y']:.2f} dB, SSIM-Y {model['ssim_y']:.4f} "
            f"(bicubic {self._val_bicubic['psnr_y']:.2f} dB, {self._val_bicubic['ssim_y']:.4f})"
        )


def _psnr_rgb(sr: Tensor, hr: Tensor) -> Tensor:
    """Batch PSNR on RGB in [0, 1] (a training signal only; the reported metric is Y-channel)."""
    mse = F.mse_loss(sr.float().clamp(0, 1), hr.float()).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, Config)


def run(args: argparse.Namespace) -> int:
    return cli_train(NAME, Config, SRGANRecipe, args)
