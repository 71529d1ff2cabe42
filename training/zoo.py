"""Reproduce the shipped model zoo: train, evaluate and export every default model.

    python -m training.zoo                       # everything, in order (resumes what exists)
    python -m training.zoo --only quickdraw_cgan  # one model (and what it depends on)
    python -m training.zoo --dry-run              # print the exact commands
    make zoo                                      # the same as the first line

Every step is a plain ``transfigure`` command, printed before it runs, so a reader can copy any
of them. Training steps resume from ``runs/<run>/checkpoints/last.pt`` when it exists (the loop
restores nets, optimizers, schedulers and RNG state exactly), so the zoo can be built in several
sittings: stop at any time, run the same command again. Settings are sized for 2 CPU cores; on a
GPU pass ``--device cuda`` and raise the step counts.

The shared data folder is ``--data-root`` (default ``../shared/data`` next to the checkout).

A fresh run with these commands follows a clean schedule. Some shipped runs did not: their
``--steps`` was changed on resume (sr_x4 9,000 -> 6,000 at step 4,500; facades 3,000 -> 4,500 ->
6,000, the last a warm restart from a rate of 0 back to half), which moves the linear decay, and the
quickdraw_cgan run (constant rate) was continued from 3,000 to 4,000 steps; expect numbers close to
their cards', not identical ones. The INT8 files of facades_label2photo, sr_x4 and sr_x4_gan were
re-quantised from the card and an fp32 ONNX file of the model
(``transfigure export models/NAME --onnx FP32.onnx --name NAME --int8 ...``, ``--dequantize`` for
facades); the card of each model records how its file was made. The season and style translators
are exported in fp32: their network runs at 128 px, so INT8 would save little.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnxruntime as ort
from PIL import Image

from models import zoo_dir
from models.card import BarCriterion, ModelCard, QualityBar
from models.files import atomic_write
from training.config import ConfigError, check_value_types, config_from_args, config_to_argv
from training.data.images import list_images, load_rgb_array
from training.evaluate import report_prefix
from training.grids import grid_png
from training.quality import (
    bicubic_downscale,
    bicubic_upscale,
    crop_to_multiple,
)
from training.recipes import recipe_module

ROOT = Path(__file__).resolve().parents[1]


# -- the quality bars, checked on the eval JSON; the verdict goes into the card's quality_bar --
Metrics = dict[str, float]
BarCheck = Callable[[Metrics], QualityBar]
_NAN = float("nan")


def bar_judge_per_class(m: Metrics) -> QualityBar:
    """cGAN: judge accuracy on samples >= 90 % of its accuracy on real test drawings, every class."""
    requirement = "judge accuracy on samples >= 90 % of its accuracy on real test drawings in every class"
    prefix = "judge_accuracy_samples_"
    rows = []
    for key, acc in sorted(m.items()):
        if key.startswith(prefix) and f"judge_accuracy_real_{key[len(prefix) :]}" in m:
            cls = key[len(prefix) :]
            rows.append((acc / m[f"judge_accuracy_real_{cls}"], cls, acc, m[f"judge_accuracy_real_{cls}"]))
    if not rows:
        missing = BarCriterion.judge(requirement, "per-class judge accuracies", None, ">=", 0.9)
        return QualityBar.of([missing])
    ratio, cls, acc, real = min(rows)
    # not part of the bar, but a collapsed generator can pass it: say how varied the samples are
    div = [m[f"diversity_samples_{c}"] / m[f"diversity_real_{c}"] for _, c, _, _ in rows
           if m.get(f"diversity_real_{c}") and f"diversity_samples_{c}" in m]  # fmt: skip
    context = {f"judge_accuracy_samples_{cls}": acc, f"judge_accuracy_real_{cls}": real}
    if div:
        context |= {"diversity_samples_vs_real_min": min(div), "diversity_samples_vs_real_max": max(div)}
    worst = f"judge_accuracy_samples_{cls} / judge_accuracy_real_{cls} (worst class)"
    return QualityBar.of([BarCriterion.judge(requirement, worst, ratio, ">=", 0.9, context)])


def bar_psnr(minimum: float) -> BarCheck:
    def check(m: Metrics) -> QualityBar:
        return QualityBar.of([BarCriterion.judge(
            f"Set5 x4 Y-PSNR >= {minimum} dB", "psnr_y_x4", m.get("psnr_y_x4"), ">=", minimum,
            {"psnr_y_bicubic_x4": m.get("psnr_y_bicubic_x4")},
        )])  # fmt: skip

    return check


def bar_sharper_than(reference_eval: Path, factor: float = 1.25) -> BarCheck:
    """SR GAN phase: "visibly sharper" than the PSNR model, made measurable as the high-frequency
    energy ratio (``sharpness_y_x4``, 1 = as detailed as HR) at least ``factor`` x the reference's."""

    def check(m: Metrics) -> QualityBar:
        ref = json.loads(reference_eval.read_text(encoding="utf-8")) if reference_eval.is_file() else {}
        ref_sharp = next((x["value"] for x in ref.get("metrics", []) if x["name"] == "sharpness_y_x4"), None)
        return QualityBar.of([BarCriterion.judge(
            f"sharper than the PSNR model: Set5 high-frequency energy ratio (HR = 1) >= {factor} x its",
            "sharpness_y_x4", m.get("sharpness_y_x4"), ">=", None if ref_sharp is None else factor * ref_sharp,
            {"sharpness_y_x4 of the PSNR model": ref_sharp, "psnr_y_x4": m.get("psnr_y_x4")},
        )])  # fmt: skip

    return check


def bar_fid(tag: str, max_fid: float | None = None, below_identity: float | None = None,
             judge_share: float | None = None, max_identity_ratio: float | None = None,
             cnn_judge_share: float | None = None, max_border: float | None = None) -> BarCheck:  # fmt: skip
    """FID at most ``max_fid``, or at least ``below_identity`` (a fraction) under the identity FID,
    or at most ``max_identity_ratio`` x the identity FID, the domain judge's target share at least
    ``judge_share``, the independent (from-scratch CNN) judge's at least ``cnn_judge_share``, and no
    border strip changed more than ``max_border`` x the interior (``border_change_ratio``: a band
    painted along an edge, which neither judge sees)."""

    def check(m: Metrics) -> QualityBar:
        fid_name, ident_name = f"fid_{tag}", f"fid_identity_{tag}"
        fid, ident = m.get(fid_name), m.get(ident_name, _NAN)
        identity = {ident_name: ident}
        criteria = []
        if max_fid is not None:
            criteria.append(BarCriterion.judge(f"FID <= {max_fid:g}", fid_name, fid, "<=", max_fid, identity))
        if below_identity is not None:
            want = f"{below_identity:.0%} below" if below_identity else "below"
            criteria.append(BarCriterion.judge(
                f"FID {want} the identity baseline", fid_name, fid, "<=", ident * (1 - below_identity), identity
            ))  # fmt: skip
        if max_identity_ratio is not None:
            criteria.append(BarCriterion.judge(
                f"FID <= {max_identity_ratio:g} x the identity baseline", fid_name, fid, "<=",
                ident * max_identity_ratio, identity,
            ))  # fmt: skip
        if judge_share is not None:
            share = f"judge_target_share_{tag}"
            criteria.append(BarCriterion.judge(
                f"domain judge calls >= {judge_share:.0%} of outputs the target", share, m.get(share), ">=",
                judge_share,
                {f"judge_target_share_identity_{tag}": m.get(f"judge_target_share_identity_{tag}"),
                 f"judge_accuracy_real_target_{tag}": m.get(f"judge_accuracy_real_target_{tag}")},
            ))  # fmt: skip
        if cnn_judge_share is not None:
            share = f"cnn_judge_target_share_{tag}"
            criteria.append(BarCriterion.judge(
                f"independent CNN judge calls >= {cnn_judge_share:.0%} of outputs the target", share,
                m.get(share), ">=", cnn_judge_share,
                {f"cnn_judge_target_share_identity_{tag}": m.get(f"cnn_judge_target_share_identity_{tag}"),
                 f"cnn_judge_accuracy_real_target_{tag}": m.get(f"cnn_judge_accuracy_real_target_{tag}")},
            ))  # fmt: skip
        if max_border is not None:
            name = f"border_change_ratio_{tag}"
            criteria.append(BarCriterion.judge(
                f"no border strip changed more than {max_border:g} x the interior", name, m.get(name), "<=",
                max_border, {},
            ))  # fmt: skip
        return QualityBar.of(criteria)

    return check


def bar_verdict(check: BarCheck, eval_json: Path, net: str | None) -> QualityBar:
    """The card's ``quality_bar``: the bar checked on ``net``'s figures in an evaluation report."""
    report = json.loads(eval_json.read_text(encoding="utf-8"))
    metrics = {m["name"]: float(m["value"]) for m in report.get("metrics", []) if m.get("net") in (None, net)}
    return check(metrics)


def write_sr_comparison(models: Path, hr_dir: Path, names: tuple[str, ...] = ("sr_x4", "sr_x4_gan"),
                        crop: int = 96) -> Path | None:  # fmt: skip
    """``models/<last name>/compare.png``: for each HR image a centre crop of bicubic | each model |
    HR, upscaled from the same LR input through the exported ONNX files (what the service runs)."""
    paths = [models / n / "model.onnx" for n in names]
    if not all(p.is_file() for p in paths) or not Path(hr_dir).is_dir():
        return None
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]
    rows = []
    for f in list_images(hr_dir):
        hr = crop_to_multiple(load_rgb_array(f), 4)
        lr = bicubic_downscale(hr, 4)
        outs = [bicubic_upscale(lr, 4)]
        for sess in sessions:
            y = sess.run(None, {"image": (lr.astype(np.float32) / 255).transpose(2, 0, 1)[None]})[0][0]
            outs.append((np.clip(y, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8))
        top, left = (hr.shape[0] - crop) // 2, (hr.shape[1] - crop) // 2
        rows.append([im[top : top + crop, left : left + crop] for im in [*outs, hr]])
    return atomic_write(models / names[-1] / "compare.png", grid_png(rows, cell=192))


def write_before_after(model_dir: Path, photos: list[Path], out: Path, long_side: int | None = None) -> Path:
    """A before/after figure: the photos at their own size (top row) and the model's output for each
    (bottom row), run through the model folder's ONNX file as shipped, written as a JPEG.
    ``long_side``: each photo first resized (bicubic) to that long side, to show a larger input."""
    card = ModelCard.load(model_dir)
    lo, hi = card.input.range
    olo, ohi = card.output.range
    sess = ort.InferenceSession(str(model_dir / card.onnx_file), providers=["CPUExecutionProvider"])
    before, after = [], []
    for f in photos:
        rgb = load_rgb_array(f)
        if long_side:
            scale = long_side / max(rgb.shape[:2])
            size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))
        h, w = rgb.shape[:2]
        m = card.input.multiple_of  # reflect-padded to the multiple and cropped back, as /translate does
        padded = np.pad(rgb, ((0, -h % m), (0, -w % m), (0, 0)), mode="reflect")
        x = (padded.astype(np.float32) / 255 * (hi - lo) + lo).transpose(2, 0, 1)[None]
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0][0].transpose(1, 2, 0)[:h, :w]
        before.append(rgb)
        after.append((np.clip((y - olo) / (ohi - olo), 0, 1) * 255).round().astype(np.uint8))
    cell = max(im.shape[0] for im in before)
    png = grid_png([before, after], max_bytes=1 << 30, cell=cell)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return atomic_write(out, lambda f: image.save(f, format="JPEG", quality=92))


@dataclass(frozen=True)
class TrainRun:
    """One ``transfigure train`` command: the recipe, its run folder and the fields of the recipe's
    ``Config`` that it sets (every other field keeps the recipe's default)."""

    recipe: str  # a name of training.recipes.RECIPE_MODULES
    out: Path
    config: dict[str, Any]

    def argv(self) -> list[str]:
        config_cls = recipe_module(self.recipe).Config
        return ["train", self.recipe, *config_to_argv(config_cls, {**self.config, "out": self.out})]

    def check(self) -> Any:
        """The ``Config`` this command trains with, checked without training: every field is one of the
        recipe's and has its type, the Config accepts the values (choices, the recipe's own checks),
        and :meth:`argv`, parsed as ``transfigure train`` parses it, gives exactly these values.
        Raises ConfigError otherwise."""
        mod = recipe_module(self.recipe)
        values = {**self.config, "out": self.out}
        check_value_types(mod.Config, values)
        mod.Config(**values)
        parser = _RaisingParser(prog=f"transfigure train {self.recipe}")
        mod.add_arguments(parser)
        config, _ = config_from_args(mod.Config, parser.parse_args(self.argv()[2:]))
        for name, value in values.items():
            want = os.fspath(value) if isinstance(value, os.PathLike) else value
            if getattr(config, name) != (tuple(want) if isinstance(want, list) else want):
                raise ConfigError(
                    f"{self.recipe} --{name.replace('_', '-')}: asked for {value!r}, "
                    f"the command gives {getattr(config, name)!r}"
                )
        return config


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


@dataclass(frozen=True)
class Evaluate:
    """A ``transfigure evaluate`` command: run or model folders, and its options."""

    paths: tuple[Path, ...]
    data: Path | None = None
    judge: Path | None = None  # cgan: the classifier run
    out: Path | None = None
    feature_cache: Path | None = None

    def argv(self) -> list[str]:
        options = {
            "--data": self.data,
            "--judge": self.judge,
            "--out": self.out,
            "--feature-cache": self.feature_cache,
        }
        return ["evaluate", *map(str, self.paths), *_options(options)]

    def report(self, folder: Path) -> Path:
        """The JSON report this command writes for ``folder`` (one of ``paths``; needs ``data`` and
        ``out``): ``OUT/[FOLDER_]<data folder's name>.json``."""
        if folder not in self.paths or self.data is None or self.out is None:
            raise ValueError(f"{folder} is not evaluated into a known report by {self.argv()}")
        return self.out / f"{report_prefix(folder, len(self.paths) > 1)}{self.data.name}.json"


@dataclass(frozen=True)
class Export:
    """A ``transfigure export`` command: the run, the model's name and net, the evaluation whose
    metrics go into the card, and INT8 (kept only if the headline metric loses at most
    ``int8_max_loss``; None: fp32 only)."""

    run: Path
    name: str
    net: str | None = None  # default: the run's first net
    data: Path | None = None
    eval: Path | None = None
    int8_max_loss: float | None = None
    notes: str | None = None  # the card's notes, for people (e.g. what a missed bar needs next)

    def argv(self, with_eval: bool = True, quality_bar: str | None = None) -> list[str]:
        options: dict[str, Any] = {"--name": self.name, "--net": self.net, "--data": self.data,
                                   "--notes": self.notes}  # fmt: skip
        options["--eval"] = self.eval if with_eval else None
        int8 = (
            ["--int8", "--int8-max-loss", repr(self.int8_max_loss)] if self.int8_max_loss is not None else []
        )
        return ["export", str(self.run), *_options(options), *int8, *_options({"--quality-bar": quality_bar})]


def _options(options: dict[str, Any]) -> list[str]:
    return [text for flag, value in options.items() if value is not None for text in (flag, str(value))]


@dataclass
class Job:
    """One shipped model: the runs it trains and how it is evaluated and exported."""

    name: str
    train: list[TrainRun]  # in order
    evaluate: Evaluate | None
    export: Export
    needs: list[str] = field(default_factory=list)  # jobs whose runs this one starts from
    bar: BarCheck | None = None  # the shipping bar, checked on the --eval JSON at export
    # evaluate the exported model folder (the ONNX file as shipped): export, evaluate, export again
    # with the metrics (the same weights give the same file)
    evaluate_exported: bool = False
    # before/after figures of the exported model for the docs: test photos at their own size, and
    # the same figure with the first photo at 1024 px (docs/before_after_NAME.jpg, ..._1024.jpg)
    figure_photos: list[Path] = field(default_factory=list)

    def export_args(self, with_eval: bool = True) -> list[str]:
        """The ``export`` command, with ``--quality-bar`` holding the bar verdict when the evaluation
        exists (``with_eval=False``: without ``--eval``, the first export of an ``evaluate_exported`` job)."""
        verdict = None
        if with_eval and self.bar is not None and self.export.eval is not None and self.export.eval.is_file():
            verdict = bar_verdict(self.bar, self.export.eval, self.export.net or "G").model_dump_json()
        return self.export.argv(with_eval, verdict)


# a coastal photo from the Monet set's photos: outside the season translators' Yosemite training data
OUTSIDE_PHOTO = "000910d219.jpg"


def _first(folder: Path, n: int) -> list[Path]:
    """The first ``n`` files of a folder in byte order of their names (missing folder: none)."""
    if not folder.is_dir():
        return []
    return sorted(folder.iterdir(), key=lambda p: p.name.encode("utf-8", "surrogateescape"))[:n]


# sized for about 40 minutes of a 2-core CPU per translator run (~1 s a step); raise on a GPU
TRANSLATOR_STEPS = 2400
W2S_STEPS = 1800  # winter2summer, no texture head: ~27 min of a 2-core CPU
MONET_STEPS = 2400  # photo2monet: ~41 min of a 2-core CPU


def jobs(data: Path, runs: Path) -> list[Job]:
    s2w, monet, facades = data / "summer2winter_yosemite", data / "monet_kaggle", data / "facades"
    quickdraw, t91, set5 = str(data / "quickdraw"), str(data / "T91"), str(data / "Set5")
    # Season and style translators: the guided translator (a compact ResNet on a 128 px copy, a
    # guided filter to full resolution, the detail path for texture) trained on the full 256 px
    # photos with the CycleGAN objective, and learning from frozen ImageNet features
    # (EfficientNet-Lite0 from its wheel): a patch-level projected discriminator (Projected GAN) and
    # a feature-statistics loss (per-channel mean/std against the target domain's, weight 10) with a
    # feature content loss against the input (weight 1); at equal steps this moved photo->Monet
    # further than the sliced-Wasserstein loss at weight 3 (docs/design/translators.md). The guided
    # filter's slopes are bounded (gain 1 + a in (0.25, 1.75)): unbounded, channels inverted their
    # local contrast and painted rainbow fringes along bright edges. No normalisation in the
    # generator: with this signal instance norm grew droplet blobs. LSGAN, pool 50, lr constant for
    # the first half then linear decay. The translator preserves the photo by construction, so the
    # cycle loss is lighter than the reference's (1, not 10) and there is no identity loss: both are
    # L1 terms that hold an identity-initialised generator at the identity.
    guided = {"generator": "guided", "crop_size": 256, "low_size": 128, "d_size": 128, "upsample": "resize",
              "ngf": 32, "n_blocks": 6, "norm": "none", "detail": True, "gf_max_slope": 0.75,
              "lambda_cycle": 1.0, "lambda_identity": 0.0, "discriminator": "projected", "lr_d": 1e-4,
              "lambda_style": 10.0, "style_loss": "moments", "lambda_content": 1.0,
              "ema_decay": 0.999, "num_workers": 1, "ckpt_every": 300, "sample_every": 300,
              "log_every": 50}  # fmt: skip
    # The translators' generator is reflection padded throughout: with the downsampling convs zero
    # padded, the network knows where the top edge is, and winter->summer learned to paint a
    # sky-blue band along the top of every photo. A texture head (plain 3 x 3 residual blocks, 16
    # channels, on a 128 px copy) paints what the colour path cannot, learning at 5x the rest's
    # rate: on photo->Monet it took the Inception judge from 32 % to 74 % Monet
    # (docs/design/translators.md).
    texture = {"texture": 16, "texture_size": 128, "texture_dilation": "plain", "lr_texture": 1e-3}
    reflect = {**guided, "g_padding": "reflect"}
    translators = {**reflect, **texture}
    # the SR models: INT8 only if Set5 Y-PSNR loses at most 1 % (0.3 dB): the PSNR bar is tight
    sr_int8 = 0.01
    models = zoo_dir()
    s2w_run, w2s_run, monet_run = (
        runs / "zoo_summer2winter",
        runs / "zoo_winter2summer",
        runs / "zoo_photo2monet",
    )
    p2p_run, cls_run, cgan_run = (
        runs / "zoo_facades",
        runs / "zoo_quickdraw_classifier",
        runs / "zoo_quickdraw_cgan",
    )
    sr_run, srgan_run = runs / "zoo_sr_x4", runs / "zoo_sr_x4_gan"
    feature_cache = runs / "feature_cache"
    return [
        Job(
            "quickdraw_cgan",
            bar=bar_judge_per_class,
            train=[
                TrainRun("classifier", cls_run, {"data": quickdraw, "steps": 3000}),
                TrainRun(
                    "cgan",
                    cgan_run,
                    {
                        "data": quickdraw,
                        "ngf": 32,
                        "ndf": 32,
                        "lr_g": 2e-4,
                        "mode_seeking": 0.1,
                        "steps": 4000,
                        "ckpt_every": 500,
                    },
                ),
            ],
            evaluate=Evaluate((cgan_run,), judge=cls_run),
            export=Export(cgan_run, "quickdraw_cgan", eval=cgan_run / "eval" / "quickdraw.json"),
        ),
        Job(
            "sr_x4",
            bar=bar_psnr(30.5),
            train=[
                TrainRun(
                    "srgan",
                    sr_run,
                    {
                        "phase": "psnr",
                        "data": t91,
                        "val_data": set5,
                        "num_conv": 10,
                        "steps": 6000,
                        "lr_g": 5e-4,
                        "sample_every": 1000,
                        "num_workers": 1,
                        "ckpt_every": 500,
                    },
                ),
            ],
            evaluate=Evaluate((sr_run,), data=Path(set5)),
            export=Export(
                sr_run, "sr_x4", data=Path(set5), eval=sr_run / "eval" / "Set5.json", int8_max_loss=sr_int8
            ),
        ),
        Job(
            "sr_x4_gan",
            needs=["sr_x4"],
            bar=bar_sharper_than(sr_run / "eval" / "Set5.json"),
            train=[
                TrainRun(
                    "srgan",
                    srgan_run,
                    {
                        "phase": "gan",
                        "num_conv": 10,
                        "init": str(sr_run),
                        "data": t91,
                        "val_data": set5,
                        "batch_size": 8,
                        "ndf": 32,
                        "lr_d": 5e-4,
                        "gan_weight": 0.1,
                        "steps": 800,
                        "ema_decay": 0.99,
                        "sample_every": 500,
                        "num_workers": 1,
                        "ckpt_every": 250,
                    },
                ),
            ],
            evaluate=Evaluate((srgan_run,), data=Path(set5)),
            export=Export(
                srgan_run,
                "sr_x4_gan",
                data=Path(set5),
                eval=srgan_run / "eval" / "Set5.json",
                int8_max_loss=sr_int8,
            ),
        ),
        Job(
            "summer2winter",
            bar=bar_fid(
                "A2B", max_identity_ratio=1.05, judge_share=0.60, cnn_judge_share=0.60, max_border=2.0
            ),
            train=[
                TrainRun("cyclegan", s2w_run, {"data": str(s2w), **translators, "steps": TRANSLATOR_STEPS})
            ],
            evaluate=Evaluate(
                (models / "summer2winter",),
                data=s2w,
                out=s2w_run / "eval_shipped",
                feature_cache=feature_cache,
            ),
            export=Export(
                s2w_run,
                "summer2winter",
                net="G_AB",
                eval=s2w_run / "eval_shipped" / "summer2winter_yosemite.json",
            ),
            evaluate_exported=True,
            figure_photos=[*_first(s2w / "testA", 3), monet / "photo_jpg" / OUTSIDE_PHOTO],
        ),
        # winter2summer is the G_BA of a run without the texture head: with it, winter->summer
        # lost on every measure (FID 1.05x -> 1.15x the identity's, both judges down), while
        # summer->winter gained on every one (docs/design/translators.md).
        Job(
            "winter2summer",
            bar=bar_fid(
                "B2A", max_identity_ratio=1.05, judge_share=0.60, cnn_judge_share=0.60, max_border=2.0
            ),
            train=[TrainRun("cyclegan", w2s_run, {"data": str(s2w), **reflect, "steps": W2S_STEPS})],
            evaluate=Evaluate(
                (models / "winter2summer",),
                data=s2w,
                out=w2s_run / "eval_shipped",
                feature_cache=feature_cache,
            ),
            export=Export(
                w2s_run,
                "winter2summer",
                net="G_BA",
                eval=w2s_run / "eval_shipped" / "summer2winter_yosemite.json",
            ),
            evaluate_exported=True,
            figure_photos=[*_first(s2w / "testB", 3), monet / "photo_jpg" / OUTSIDE_PHOTO],
        ),
        Job(
            "photo2monet",
            bar=bar_fid(
                "photo_jpg2monet_jpg",
                max_identity_ratio=0.95,
                judge_share=0.70,
                cnn_judge_share=0.80,
                max_border=2.0,
            ),
            train=[
                TrainRun(
                    "cyclegan",
                    monet_run,
                    {
                        "data": str(monet),
                        "a_dir": "photo_jpg",
                        "b_dir": "monet_jpg",
                        "holdout_every": 10,
                        **translators,
                        "steps": MONET_STEPS,
                    },
                ),
            ],
            evaluate=Evaluate(
                (models / "photo2monet",),
                data=monet,
                out=monet_run / "eval_shipped",
                feature_cache=feature_cache,
            ),
            export=Export(
                monet_run, "photo2monet", net="G_AB", eval=monet_run / "eval_shipped" / "monet_kaggle.json"
            ),
            evaluate_exported=True,
            # held-out photos (every 10th by name), and a Yosemite photo from outside its training data
            figure_photos=[*_first(monet / "photo_jpg", 30)[::10], *_first(s2w / "testA", 1)],
        ),
        Job(
            "facades_label2photo",
            bar=bar_fid("B2A", max_fid=200),
            train=[
                TrainRun(
                    "pix2pix",
                    p2p_run,
                    {
                        "data": str(facades),
                        "direction": "BtoA",
                        "crop_size": 256,
                        "ngf": 32,
                        "ema_decay": 0.999,
                        "steps": 6000,
                        "num_workers": 0,
                        "sample_every": 500,
                        "ckpt_every": 250,
                    },
                ),
            ],
            evaluate=Evaluate((p2p_run,)),
            # INT8 (QDQ) keeps the 13 M-parameter U-Net at ~13 MB instead of 53 MB (zoo budget 60 MB);
            # kept only if FID worsens by at most 10 %, both numbers go into the card
            export=Export(
                p2p_run, "facades_label2photo", eval=p2p_run / "eval" / "facades.json", int8_max_loss=0.1
            ),
        ),
    ]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "training.cli", *args]


def _run(cmd: list[str], dry_run: bool) -> None:
    print("$ transfigure " + shlex.join(cmd[3:]), flush=True)
    if not dry_run:
        subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.zoo", description=__doc__.strip().splitlines()[0])
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--only", nargs="*", default=None, help="model names (default: all)")
    p.add_argument("--stage", choices=["train", "evaluate", "export", "all"], default="all")
    p.add_argument("--device", default=None, help="passed to training (auto: cuda if available)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)

    all_jobs = {j.name: j for j in jobs(args.data_root, args.runs)}
    wanted = args.only or list(all_jobs)
    unknown = [n for n in wanted if n not in all_jobs]
    if unknown:
        p.error(f"unknown model(s) {unknown}: choose from {', '.join(all_jobs)}")
    order: list[str] = []

    def visit(name: str) -> None:
        for dep in all_jobs[name].needs:
            visit(dep)
        if name not in order:
            order.append(name)

    for name in wanted:
        visit(name)
    for name in order:
        job = all_jobs[name]
        print(f"== {name}", flush=True)
        if args.stage in {"train", "all"}:
            for run in job.train:
                extra = ["--resume"] if (run.out / "checkpoints" / "last.pt").is_file() else []
                extra += ["--device", args.device] if args.device else []
                _run(_cmd(*run.argv(), *extra), args.dry_run)
        if args.stage in {"evaluate", "all"} and job.evaluate and name in wanted:
            if job.evaluate_exported:
                for dep in [name, *(n for n, j in all_jobs.items() if name in j.needs)]:
                    _run(_cmd(*all_jobs[dep].export_args(with_eval=False)), args.dry_run)
            _run(_cmd(*job.evaluate.argv()), args.dry_run)
        if args.stage in {"export", "all"} and name in wanted:
            _run(_cmd(*job.export_args()), args.dry_run)
            if job.figure_photos and not args.dry_run and all(p.is_file() for p in job.figure_photos):
                docs = ROOT / "docs"
                for out, photos, side in (
                    (docs / f"before_after_{name}.jpg", job.figure_photos, None),
                    (docs / f"before_after_{name}_1024.jpg", job.figure_photos[:1], 1024),
                ):
                    write_before_after(zoo_dir() / name, photos, out, side)
                    print(f"before/after figure: {out}", flush=True)  # fmt: skip
            if name == "sr_x4_gan" and not args.dry_run:
                out = write_sr_comparison(zoo_dir(), args.data_root / "Set5")
                print(f"comparison grid (bicubic | sr_x4 | sr_x4_gan | HR): {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
