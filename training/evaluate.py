"""Measure a training run: FID/KID + domain judge (translate), judge accuracy (sample), PSNR/SSIM (upscale).

``transfigure evaluate RUN [--data DIR] [--name NAME] [--limit N] [--judge runs/classifier]``

Writes ``RUN/eval/<name>.json`` (every metric as {name, value, split, protocol, command}, plus the
net it belongs to and per-image figures), ``RUN/eval/<name>.md`` (a Markdown table) and small
sample grids ``RUN/eval/<name>_<net>.png``. ``transfigure export --eval`` copies these metrics
into the card.

Translation (CycleGAN both directions, pix2pix): FID/KID of translated test inputs against the real
test targets **next to the identity baseline** (untranslated inputs vs the same targets); a linear
domain judge on the same Inception features, trained on the training folders, reports the share of
translated images it calls "target" next to its share for untranslated inputs and for real target
images; content preservation (Y-SSIM and Inception cosine similarity of input vs output) so that a
generator that ignores its input cannot look good. Every image (real or generated) goes through the
recipe's own split function and evaluation transform (resize to the training crop), is quantised to
uint8 and fed to :mod:`training.fid` under its one protocol.

Sanity numbers of this protocol on the full shared data (summer2winter_yosemite, 256 px, measured
once on CPU): identity FID testA vs testB 79.1 (the plain protocol quoted in the issue: ~80.6);
same-domain floor trainB vs testB 63.8; the judge (L2 1.0) calls 20 % of untranslated summer test
images winter and 78 % of real winter test images winter. A full CycleGAN evaluation runs the
Inception net on ~2,100 images: about 6 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EVAL_DIR = "eval"
GRID_IMAGES = 4
SSIM_PROTOCOL = "Y-SSIM (BT.601 luma, Gaussian 11/1.5, L=255) of input vs output at the training crop size"
COSINE_PROTOCOL = "cosine similarity of Inception pool features, input vs output (training.fid protocol)"

# N x C x H x W float tensor in the input range -> N x C x H' x W' in the output range
ImageFn = Callable[[Any], Any]


@dataclass
class EvalOptions:
    limit: int | None = None  # at most this many test images per split (None: all)
    judge_limit: int | None = 500  # training images per domain for the domain judge
    batch_size: int = 8
    device: str = "cpu"
    grid_images: int = GRID_IMAGES


@dataclass
class Report:
    """Metrics of one evaluation, in the card's shape, plus which net each belongs to."""

    command: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    headline: dict[str, str] = field(default_factory=dict)  # net -> metric name
    per_image: dict[str, Any] = field(default_factory=dict)
    grids: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)  # net -> rows of uint8 images

    def add(self, name: str, value: float, split: str, protocol: str, net: str | None = None) -> None:
        entry: dict[str, Any] = {
            "name": name,
            "value": float(value),
            "split": split,
            "protocol": protocol,
            "command": self.command,
        }
        if net is not None:
            entry["net"] = net
        self.metrics.append(entry)

    def value(self, name: str) -> float:
        return next(m["value"] for m in self.metrics if m["name"] == name)


def command_line(args: argparse.Namespace | None = None, command: str = "evaluate") -> str:
    """The command that produced a number: ``sys.argv`` joined when run as ``transfigure``; when
    called in-process (tests, notebooks) the equivalent command rebuilt from the parsed ``args``."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in {"transfigure", "cli.py", "__main__.py"} and command in argv[1:2]:
        return shlex.join(["transfigure", *argv[1:]])
    if args is None:
        return shlex.join(argv)
    parts = ["transfigure", command, str(args.run)]
    for key, value in vars(args).items():
        if key == "run" or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


# -- batches ---------------------------------------------------------------------------------------
def _limited(n: int, limit: int | None) -> int:
    return n if limit is None else min(n, limit)


def dataset_batches(dataset, keys: tuple[str, ...], batch_size: int, limit: int | None) -> Iterator[tuple]:
    """Deterministic batches of ``keys`` from a dataset whose items are dicts of tensors."""
    import torch

    n = _limited(len(dataset), limit)
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        yield tuple(torch.stack([it[k] for it in items]) for k in keys)


def image_file_batches(files: list[Path], crop_size: int, batch_size: int, limit: int | None) -> Iterator:
    from training.data import ImageFiles

    for (x,) in dataset_batches(ImageFiles(files, crop_size), ("image",), batch_size, limit):
        yield x


def torch_fn(net, device: str = "cpu") -> ImageFn:
    """A net as an :data:`ImageFn` (eval mode, fp32, no grad)."""
    import torch

    net = net.to(device).float().eval()

    def run(x):
        with torch.inference_mode():
            return net(x.to(device).float()).float().cpu()

    return run


def onnx_fn(path: str | Path, input_name: str = "image", output_name: str = "output") -> ImageFn:
    """An ONNX model as an :data:`ImageFn` (onnxruntime, CPU)."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(sess.run([output_name], {input_name: x.detach().cpu().numpy()})[0])

    return run


# -- translation -----------------------------------------------------------------------------------
@dataclass
class Translated:
    fake_features: np.ndarray
    input_features: np.ndarray
    ssim_content: list[float]
    ssim_target: list[float]
    grid: list[list[np.ndarray]]
    l1_target: list[float] = field(default_factory=list)  # mean |output - target| per image, [0, 1] scale


def _y_ssim(a: np.ndarray, b: np.ndarray) -> float:
    from training.quality import rgb_to_y, ssim

    return ssim(rgb_to_y(a), rgb_to_y(b))


def translate_split(
    fn: ImageFn,
    batches: Iterable[tuple],
    in_range: tuple[float, float] = (-1.0, 1.0),
    out_range: tuple[float, float] = (-1.0, 1.0),
    grid_images: int = GRID_IMAGES,
    device: str = "cpu",
    input_features: np.ndarray | None = None,
) -> Translated:
    """Run ``fn`` over (input[, target]) batches; Inception features of inputs and outputs, content SSIM.

    ``input_features``: the inputs' features when already computed (same images, same order)."""
    from training.fid import inception_features, to_uint8

    fake_f, in_f, ssim_c, ssim_t, l1_t, grid = [], [], [], [], [], []
    for batch in batches:
        x = batch[0]
        y = fn(x)
        x8, y8 = to_uint8(x, in_range), to_uint8(y, out_range)
        if x8.shape[1] != y8.shape[1]:  # grey <-> colour: compare on 3 channels
            x8, y8 = x8.expand(-1, 3, -1, -1), y8.expand(-1, 3, -1, -1)
        if input_features is None:
            in_f.append(inception_features([x8], device=device))
        fake_f.append(inception_features([y8], device=device))
        xs, ys = x8.permute(0, 2, 3, 1).numpy(), y8.permute(0, 2, 3, 1).numpy()
        t8 = to_uint8(batch[1], out_range).permute(0, 2, 3, 1).numpy() if len(batch) > 1 else None
        for i in range(len(xs)):
            if xs[i].shape == ys[i].shape:
                ssim_c.append(_y_ssim(xs[i], ys[i]))
            if t8 is not None:
                ssim_t.append(_y_ssim(ys[i], t8[i]))
                l1_t.append(float(np.abs(ys[i].astype(np.float64) - t8[i].astype(np.float64)).mean() / 255))
            if len(grid) < grid_images:
                grid.append([xs[i], ys[i]] + ([t8[i]] if t8 is not None else []))
    inputs = input_features if input_features is not None else np.concatenate(in_f)
    return Translated(np.concatenate(fake_f), inputs, ssim_c, ssim_t, grid, l1_t)


def features_of(batches: Iterable, value_range: tuple[float, float] = (-1.0, 1.0), device: str = "cpu"):
    """Inception features of real images given as float batches in ``value_range``."""
    from training.fid import inception_features, to_uint8

    parts = [inception_features([to_uint8(b[0] if isinstance(b, tuple) else b, value_range)], device=device)
             for b in batches]  # fmt: skip
    return np.concatenate(parts)


def translation_metrics(
    report: Report,
    net: str,
    tag: str,
    result: Translated,
    target_features: np.ndarray,
    judge,
    target_domain: str,
    split: str,
) -> None:
    """FID/KID (model and identity baseline), judge shares, content preservation for one direction."""
    from training.fid import PROTOCOL, frechet_distance, kernel_inception_distance

    proto = PROTOCOL.describe()
    n_in, n_tgt = len(result.fake_features), len(target_features)
    sp = f"{split} ({n_in} translated vs {n_tgt} real)"
    report.add(
        f"fid_{tag}", frechet_distance(result.fake_features, target_features), sp, "FID; " + proto, net
    )
    report.add(
        f"fid_identity_{tag}", frechet_distance(result.input_features, target_features),
        f"{split} ({n_in} untranslated inputs vs {n_tgt} real): identity baseline", "FID; " + proto, net,
    )  # fmt: skip
    kid, kid_std = kernel_inception_distance(result.fake_features, target_features)
    kid_id, _ = kernel_inception_distance(result.input_features, target_features)
    report.add(f"kid_{tag}", kid, sp, f"KID (std over subsets {kid_std:.4f}); " + proto, net)
    report.add(f"kid_identity_{tag}", kid_id, f"{split}: identity baseline", "KID; " + proto, net)
    if judge is not None:
        jp = f"logistic regression (L2 {judge.l2}) on Inception features, trained on the training folders"
        report.add(f"judge_target_share_{tag}", judge.share(result.fake_features, target_domain), sp, jp, net)
        report.add(
            f"judge_target_share_identity_{tag}", judge.share(result.input_features, target_domain),
            f"{split}: untranslated inputs", jp, net,
        )  # fmt: skip
        report.add(
            f"judge_accuracy_real_target_{tag}", judge.share(target_features, target_domain),
            f"{split}: real target test images", jp, net,
        )  # fmt: skip
    from training.fid import cosine_similarity

    report.add(
        f"content_cosine_{tag}", float(np.mean(cosine_similarity(result.input_features, result.fake_features))),
        sp, COSINE_PROTOCOL, net,
    )  # fmt: skip
    if result.ssim_content:
        report.add(f"content_ssim_{tag}", float(np.mean(result.ssim_content)), sp, SSIM_PROTOCOL, net)
    if result.ssim_target:
        report.add(
            f"ssim_to_target_{tag}", float(np.mean(result.ssim_target)), sp,
            "Y-SSIM of output vs its paired ground truth at the training crop size", net,
        )  # fmt: skip
    if result.l1_target:
        report.add(
            f"l1_to_target_{tag}", float(np.mean(result.l1_target)), sp,
            "mean absolute error of output vs its paired ground truth, uint8 RGB / 255, training crop size", net,
        )  # fmt: skip
    report.headline.setdefault(net, f"fid_{tag}")


def evaluate_cyclegan(run, report: Report, opts: EvalOptions) -> None:
    from training.data import resolve_unpaired_files
    from training.fid import DomainJudge

    cfg = run.config
    rec = _recipe(run)
    a_name, b_name = rec.domain_names(cfg) if hasattr(rec, "domain_names") else ("A", "B")
    split = (cfg.data or None, cfg.a_dir or None, cfg.b_dir or None, cfg.holdout_every)

    def files(phase: str) -> tuple[list[Path], list[Path]]:
        return resolve_unpaired_files(split[0], phase, split[1], split[2], split[3])

    test_a, test_b = files("test")
    train_a, train_b = files("train")
    crop, bs, dev = cfg.crop_size, opts.batch_size, opts.device
    real = {
        "A": features_of(image_file_batches(test_a, crop, bs, opts.limit), device=dev),
        "B": features_of(image_file_batches(test_b, crop, bs, opts.limit), device=dev),
    }
    judge = DomainJudge().fit(
        features_of(image_file_batches(train_a, crop, bs, opts.judge_limit), device=dev),
        features_of(image_file_batches(train_b, crop, bs, opts.judge_limit), device=dev),
    )
    for net, src, dst, files_src in (("G_AB", "A", "B", test_a), ("G_BA", "B", "A", test_b)):
        if net not in run.generators:
            continue
        tag = f"{a_name}2{b_name}" if src == "A" else f"{b_name}2{a_name}"
        result = translate_split(
            torch_fn(run.generators[net], dev), ((x,) for x in image_file_batches(files_src, crop, bs, opts.limit)),
            grid_images=opts.grid_images, device=dev, input_features=real[src],
        )  # fmt: skip
        translation_metrics(report, net, tag, result, real[dst], judge, dst, f"test{src} -> test{dst}")
        report.grids[net] = result.grid


def evaluate_pix2pix(run, report: Report, opts: EvalOptions) -> None:
    from training.data import PairedImageFolder
    from training.fid import DomainJudge

    cfg = run.config
    crop, bs, dev = cfg.crop_size, opts.batch_size, opts.device

    def paired(phase: str):
        return PairedImageFolder(cfg.data, phase=phase, direction=cfg.direction, crop_size=crop, train=False)

    test, train = paired(cfg.test_phase), paired(cfg.train_phase)
    target = features_of(dataset_batches(test, ("B",), bs, opts.limit), device=dev)
    judge = DomainJudge().fit(
        features_of(dataset_batches(train, ("A",), bs, opts.judge_limit), device=dev),
        features_of(dataset_batches(train, ("B",), bs, opts.judge_limit), device=dev),
    )
    src, dst = cfg.direction.split("to")
    result = translate_split(
        torch_fn(run.generators["G"], dev), dataset_batches(test, ("A", "B"), bs, opts.limit),
        grid_images=opts.grid_images, device=dev,
    )  # fmt: skip
    split = f"{cfg.test_phase}/ {src} -> {dst}"
    translation_metrics(report, "G", f"{src}2{dst}", result, target, judge, "B", split)
    report.grids["G"] = result.grid


@dataclass
class TranslationData:
    """The recipe's own splits for one translate net: factories of float batches in [-1, 1]."""

    test_inputs: Callable[[int | None, int], Iterator[tuple]]  # (limit, batch) -> (x,) or (x, target)
    test_targets: Callable[[int | None, int], Iterator]
    train_inputs: Callable[[int | None, int], Iterator]
    split: str


def translation_data(run, net: str) -> TranslationData:
    """Test inputs/targets and training inputs of ``net`` (CycleGAN G_AB/G_BA, pix2pix G)."""
    cfg = run.config
    crop = cfg.crop_size
    if run.recipe == "cyclegan":
        from training.data import resolve_unpaired_files

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
    if run.recipe == "pix2pix":
        from training.data import PairedImageFolder

        def paired(phase: str):
            return PairedImageFolder(
                cfg.data, phase=phase, direction=cfg.direction, crop_size=crop, train=False
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
    raise ValueError(f"recipe '{run.recipe}' is not a translation recipe")


def translation_fid(fn: ImageFn, data: TranslationData, opts: EvalOptions, target_features=None) -> float:
    """FID of ``fn``'s translations of the test inputs against the real test targets."""
    from training.fid import frechet_distance

    if target_features is None:
        target_features = features_of(data.test_targets(opts.limit, opts.batch_size), device=opts.device)
    result = translate_split(
        fn, data.test_inputs(opts.limit, opts.batch_size), grid_images=0, device=opts.device,
        input_features=np.empty((0, 2048)),  # not needed for FID
    )  # fmt: skip
    return frechet_distance(result.fake_features, target_features)


# -- super-resolution ------------------------------------------------------------------------------
def upscaler_from_fn(fn: ImageFn, value_range: tuple[float, float]):
    """An :data:`training.quality.Upscaler` (uint8 LR in, uint8 out) from an :data:`ImageFn`."""
    import torch

    from training.quality import as_uint8

    lo, hi = value_range

    def upscale(lr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(lr, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0  # a writable copy
        y = fn(x * (hi - lo) + lo)[0].float()
        return as_uint8(((y - lo) / (hi - lo)).clamp(0, 1).permute(1, 2, 0).numpy())

    return upscale


def evaluate_upscale(run, report: Report, opts: EvalOptions, hr_dir: str | Path, net: str = "G") -> None:
    from training.data.images import list_images
    from training.quality import bicubic_upscaler, evaluate_upscaler

    spec = _recipe(run).export_specs(run.config)[net]
    scale = int(spec.scale)
    files = list_images(hr_dir)[: opts.limit] if opts.limit else list_images(hr_dir)
    model = evaluate_upscaler(upscaler_from_fn(torch_fn(run.generators[net], opts.device), spec.input_range),
                              files, scale)  # fmt: skip
    bicubic = evaluate_upscaler(bicubic_upscaler(scale), files, scale)
    split = f"{Path(hr_dir).name} ({len(files)} HR images, x{scale})"
    proto = f"Y channel (BT.601), {scale} px shaved, LR by PIL bicubic on uint8 (training/quality.py)"
    sharp = "high-frequency energy ratio to HR (mean squared Laplacian of Y; 1 = as detailed as HR)"
    for key, label in (("psnr_y", "PSNR"), ("ssim_y", "SSIM"), ("sharpness_y", sharp)):
        report.add(f"{key}_x{scale}", model.mean[key], split, f"{label} {proto}", net)
        report.add(
            f"{key}_bicubic_x{scale}", bicubic.mean[key], split, f"{label} {proto}; bicubic baseline", net
        )
    report.per_image[net] = {"model": model.per_image, "bicubic": bicubic.per_image}
    report.headline.setdefault(net, f"psnr_y_x{scale}")
    report.grids[net] = _sr_grid(run.generators[net], spec, files[: opts.grid_images], opts)


def _sr_grid(net, spec, files: list[Path], opts: EvalOptions) -> list[list[np.ndarray]]:
    from training.data.images import load_rgb_array as load_rgb
    from training.quality import bicubic_downscale, bicubic_upscale, crop_to_multiple

    up = upscaler_from_fn(torch_fn(net, opts.device), spec.input_range)
    rows = []
    for f in files:
        hr = crop_to_multiple(load_rgb(f), spec.scale)
        lr = bicubic_downscale(hr, spec.scale)
        rows.append([bicubic_upscale(lr, spec.scale), up(lr), hr])
    return rows


# -- the report ------------------------------------------------------------------------------------
def _recipe(run):
    from training.recipes import recipe_module

    return recipe_module(run.recipe)


def markdown_table(report: Report, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"`{report.command}`",
        "",
        "| net | metric | value | split |",
        "|---|---|---|---|",
    ]
    for m in report.metrics:
        lines.append(f"| {m.get('net', '')} | {m['name']} | {m['value']:.4g} | {m['split']} |")
    return "\n".join(lines) + "\n"


def write_report(report: Report, run_dir: Path, name: str, extra: dict[str, Any]) -> Path:
    from training.export import grid_png

    out = run_dir / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    body = {**extra, "command": report.command, "metrics": report.metrics, "headline": report.headline,
            "per_image": report.per_image}  # fmt: skip
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=float) + "\n", encoding="utf-8")
    tmp.replace(path)
    (out / f"{name}.md").write_text(
        markdown_table(report, f"{extra.get('recipe', '')} {run_dir.name}: {name}")
    )
    for net, rows in report.grids.items():
        if rows:
            (out / f"{name}_{net}.png").write_bytes(grid_png(rows, cell=96))
    return path


EVALUATORS = {"cyclegan": evaluate_cyclegan, "pix2pix": evaluate_pix2pix}


def evaluate_run(
    run_dir: str | Path,
    data: str | None = None,
    name: str | None = None,
    options: EvalOptions = EvalOptions(),
    judge: str | None = None,
    command: str | None = None,
) -> Path:
    """Evaluate a run folder; returns the path of the JSON report."""
    import dataclasses

    from training.fid import PROTOCOL
    from training.recipes import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if data and run.recipe != "srgan":  # srgan: --data is the HR test folder, not the training data
        run.config = dataclasses.replace(run.config, data=str(data))
    report = Report(command=command or command_line())
    if run.recipe in EVALUATORS:
        EVALUATORS[run.recipe](run, report, options)
    elif run.recipe == "srgan":
        hr_dir = data or getattr(run.config, "val_data", "")
        if not hr_dir:
            raise ValueError("srgan: pass --data DIR, a folder of HR test images (e.g. shared/data/Set5)")
        evaluate_upscale(run, report, options, hr_dir)
    elif run.recipe == "cgan":
        evaluate_cgan(run, report, options, judge)
    else:
        raise ValueError(f"recipe '{run.recipe}' has nothing to evaluate (its nets are not exported)")
    default = data if run.recipe == "srgan" else getattr(run.config, "data", "")
    name = name or (Path(default).name if default else "test") or "test"
    extra = {
        "run": str(run_dir),
        "recipe": run.recipe,
        "step": run.step,
        "checkpoint": str(run.checkpoint),
        "used_ema": run.used_ema,
        "data": getattr(run.config, "data", ""),
        "fid_protocol": PROTOCOL.describe(),
        "limit": options.limit,
    }
    return write_report(report, run_dir, name, extra)


# -- class-conditional sampling --------------------------------------------------------------------
SAMPLES_PER_CLASS = 100


def penultimate_features(net, x):
    """The input of the classifier's last Linear layer (its feature space), via a forward hook."""
    import torch
    from torch import nn

    last = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("the judge has no Linear layer to take penultimate features from")
    captured = []
    handle = last[-1].register_forward_hook(lambda m, args, out: captured.append(args[0].detach().flatten(1)))
    try:
        with torch.inference_mode():
            logits = net(x)
    finally:
        handle.remove()
    return captured[-1].float(), logits.argmax(dim=1)


def judge_images(judge, images, size: int | None, batch_size: int = 256):
    """(features, predicted labels) of images in [-1, 1], resized to the judge's input size."""
    import torch
    import torch.nn.functional as F

    judge.eval()
    feats, preds = [], []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float()
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        f, p = penultimate_features(judge, x)
        feats.append(f)
        preds.append(p)
    return torch.cat(feats).numpy().astype(np.float64), torch.cat(preds).numpy()


SampleFn = Callable[[Any, Any], Any]  # (z, label) -> images


def generate_samples(fn: SampleFn, num_classes: int, latent_dim: int, n_per_class: int, seed: int = 0):
    """``n_per_class`` samples of every class from seeded noise: (images, labels)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c in range(num_classes):
        z = torch.randn(n_per_class, latent_dim, generator=g)
        label = torch.full((n_per_class,), c, dtype=torch.int64)
        images.append(fn(z, label).float())
        labels.append(label)
    return torch.cat(images), torch.cat(labels)


def torch_sample_fn(net) -> SampleFn:
    import torch

    net = net.float().eval()

    def run(z, label):
        with torch.inference_mode():
            return net(z, label).float()

    return run


def sample_judge_accuracy(fn: SampleFn, spec, judge, judge_size: int | None, n_per_class: int) -> float:
    """Mean over classes of the share of samples the judge assigns to their class (int8 checks)."""
    images, labels = generate_samples(fn, len(spec.classes), spec.latent_dim, n_per_class)
    _, pred = judge_images(judge, images, judge_size)
    return float((pred == labels.numpy()).mean())


def evaluate_cgan(
    run, report: Report, opts: EvalOptions, judge_run: str | None, n_per_class: int | None = None
) -> None:
    from training.data.labelled import LabelledImages, load_split
    from training.fid import frechet_distance, mean_pairwise_distance
    from training.recipes.classifier import load_judge

    if not judge_run:
        raise ValueError(
            "cgan evaluation needs a judge: --judge RUN of `transfigure train classifier` on the same data"
        )
    judge, jcfg = load_judge(judge_run)
    cfg, net = run.config, "G"
    classes = list(cfg.classes)
    if list(jcfg.classes) != classes:
        raise ValueError(f"the judge was trained on classes {list(jcfg.classes)}, the cGAN on {classes}")
    n = n_per_class or min(SAMPLES_PER_CLASS, opts.limit or SAMPLES_PER_CLASS)
    test = LabelledImages(
        load_split(cfg.data, "test", cfg.test_fraction, classes, cfg.image_size, cfg.channels), cfg.image_size
    )
    real_x, real_y = test.images, test.labels.numpy()
    if opts.limit:  # at most `limit` real images per class
        keep = np.concatenate([np.flatnonzero(real_y == c)[: opts.limit] for c in range(len(classes))])
        real_x, real_y = real_x[keep], real_y[keep]
    size = jcfg.image_size
    real_f, real_pred = judge_images(judge, real_x, size)
    fake_x, fake_y = generate_samples(torch_sample_fn(run.generators[net]), len(classes), cfg.latent_dim, n)
    fake_y = fake_y.numpy()
    fake_f, fake_pred = judge_images(judge, fake_x, size)
    jp = f"judge: classifier run {judge_run} (penultimate-layer features for FID/diversity)"
    sp = f"{n} samples per class (seed 0) vs the test split ({len(real_y)} images)"
    report.add("judge_accuracy_samples", float((fake_pred == fake_y).mean()), sp, "share of samples the judge "
               "assigns to their class; " + jp, net)  # fmt: skip
    report.add("judge_accuracy_real_test", float((real_pred == real_y).mean()), f"test ({len(real_y)} images)",
               "judge accuracy on real test images; " + jp, net)  # fmt: skip
    if len(fake_f) >= 2 and len(real_f) >= 2:
        report.add(
            "fid_judge", frechet_distance(fake_f, real_f), sp, "FID in the judge's feature space; " + jp, net
        )
    per_class = {}
    for c, name in enumerate(classes):
        fm, rm = fake_y == c, real_y == c
        acc_fake = float((fake_pred[fm] == c).mean())
        acc_real = float((real_pred[rm] == c).mean()) if rm.any() else None
        div_fake, div_real = mean_pairwise_distance(fake_f[fm]), mean_pairwise_distance(real_f[rm])
        per_class[name] = {"judge_accuracy_samples": acc_fake, "judge_accuracy_real": acc_real,
                           "diversity_samples": div_fake, "diversity_real": div_real}  # fmt: skip
        report.add(f"judge_accuracy_samples_{name}", acc_fake, f"class {name}: {n} samples", jp, net)
        if rm.any():  # no NaN in reports: a class without test images gets no real-image figure
            report.add(f"judge_accuracy_real_{name}", acc_real, f"class {name}: test split", jp, net)
        report.add(f"diversity_samples_{name}", div_fake, f"class {name}: {n} samples",
                   "mean pairwise L2 distance of judge features; " + jp, net)  # fmt: skip
        if rm.any():
            report.add(f"diversity_real_{name}", div_real, f"class {name}: test split",
                       "mean pairwise L2 distance of judge features; " + jp, net)  # fmt: skip
    report.per_image[net] = per_class
    report.headline.setdefault(net, "judge_accuracy_samples")
    from training.fid import to_uint8

    rows = []
    for c in range(len(classes)):
        imgs = to_uint8(fake_x[fake_y == c][:8]).permute(0, 2, 3, 1).numpy()
        rows.append(list(imgs))
    report.grids[net] = rows


# -- CLI -------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run folder (with checkpoints/last.pt)")
    parser.add_argument(
        "--data", default=None, help="dataset folder (default: the run's --data); SR: HR images"
    )
    parser.add_argument(
        "--name", default=None, help="report name: RUN/eval/NAME.json (default: data folder name)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="at most N test images per split (quick checks)"
    )
    parser.add_argument(
        "--judge-limit", type=int, default=500, help="training images per domain for the judge"
    )
    parser.add_argument("--judge", default=None, help="cgan: a classifier run folder used as the judge")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def run(args: argparse.Namespace) -> int:
    from training.fid import InceptionUnavailable

    opts = EvalOptions(
        limit=args.limit, judge_limit=args.judge_limit, batch_size=args.batch_size, device=args.device
    )
    try:
        path = evaluate_run(args.run, args.data, args.name, opts, args.judge, command_line(args))
    except (InceptionUnavailable, FileNotFoundError, ValueError) as e:
        print(f"transfigure evaluate: {e}", file=sys.stderr)
        return 1
    print(path.with_suffix(".md").read_text())
    print(f"report: {path}")
    return 0
