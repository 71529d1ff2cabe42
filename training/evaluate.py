"""Measure a training run or a shipped model: FID/KID + domain judge (translate), judge accuracy
(sample), PSNR/SSIM (upscale).

``transfigure evaluate PATH [PATH ...] [--data DIR] [--name NAME] [--out DIR] [--limit N] [--judge RUN]``

``PATH`` is a training run folder (``checkpoints/last.pt``: its PyTorch nets are measured) or, for
translate models (CycleGAN, pix2pix), a zoo model folder (``card.json`` + ``model.onnx``: the ONNX
file is measured as shipped, in onnxruntime, after its sha256 is checked against the card). Writes
``PATH/eval/<name>.json`` (every metric as {name, value, split, protocol, command}, plus the net it
belongs to, the image sizes measured and per-image figures), ``PATH/eval/<name>.md`` (a Markdown
table) and small sample grids ``PATH/eval/<name>_<net>.png``; ``--out DIR`` writes them to ``DIR``
instead (named ``<PATH name>_<name>`` when several paths are given). ``<name>`` defaults to the data
folder's name. ``transfigure export --eval`` copies these metrics into the card.

Translation (CycleGAN both directions, pix2pix) is measured as users see it: **every test image at
its own size** (no resize), in the model's input range, reflect-padded at the bottom/right to the
net's ``multiple_of`` (and to at least 32 px) and cropped back, as the service's ``/translate``
does; images of equal size are batched together. Reported: FID/KID of the translated test inputs
against the real test targets **next to the identity baseline** (untranslated inputs vs the same
targets); a linear domain judge on the same Inception features, trained on the training splits
only, reports the share of translated images it calls "target" next to its share for untranslated
inputs and for real target images; content preservation (Y-SSIM and Inception cosine similarity of
input vs output) so that a generator that ignores its input cannot look good. A zoo model's splits
are rebuilt from its card's ``training.recipe_config`` (``--data`` replaces the data folder, which
the card names as it was on the training machine). Images enter :mod:`training.fid` as uint8 under
its one protocol (which resizes to 299² inside). Inception features of real images and the fitted
judge are kept for the process, so several models or both directions of a CycleGAN measured in one
call compute each real image's features once.

Sanity numbers of this protocol on the full shared data (summer2winter_yosemite, 256 px photos,
measured once on CPU): identity FID testA vs testB 79.1; same-domain floor trainB vs testB 63.8
(trainA vs testA 50.4); the judge (L2 1.0, 500 training images per domain) calls 20 % of
untranslated summer test images winter and 78 % of real winter test images winter. Both shipped
CycleGAN directions in one call run the Inception net on ~2,100 images and the ResNet generators on
547: 22 minutes on 2 CPU cores shared with three training runs (nice 10).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from models.card import CARD_FILE, CardError, ModelCard
from models.files import atomic_write, atomic_write_json
from training.config import config_from_dict
from training.data import EmptyFolderError, ImageFiles
from training.data.images import list_images, load_rgb_array
from training.domain_cnn import clear_judges, domain_cnn_judge
from training.fid import (
    PROTOCOL,
    DomainJudge,
    InceptionUnavailable,
    cosine_similarity,
    frechet_distance,
    inception_features,
    kernel_inception_distance,
    mean_pairwise_distance,
    to_uint8,
)
from training.grids import grid_png
from training.provenance import portable_path
from training.quality import (
    as_uint8,
    bicubic_downscale,
    bicubic_upscale,
    bicubic_upscaler,
    crop_to_multiple,
    evaluate_upscaler,
    rgb_to_y,
    ssim,
)
from training.recipes import load_run, recipe_module, recipe_names, with_data

EVAL_DIR = "eval"
GRID_IMAGES = 4
# /translate pads every input to at least this side (service/imaging.py MIN_TRANSLATE_SIDE): a ResNet
# generator's reflection pads fail on 1-pixel feature maps
MIN_TRANSLATE_SIDE = 32
SSIM_PROTOCOL = "Y-SSIM (BT.601 luma, Gaussian 11/1.5, L=255) of input vs output at the image's own size"
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
    cnn_judge: bool = True  # also the independent judge (a CNN from scratch) on translations
    truncation: float | None = None  # sample models with a style generator: psi of the samples


@dataclass
class Report:
    """Metrics of one evaluation, in the card's shape, plus which net each belongs to."""

    command: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    headline: dict[str, str] = field(default_factory=dict)  # net -> metric name
    per_image: dict[str, Any] = field(default_factory=dict)
    grids: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)  # net -> rows of uint8 images
    image_sizes: dict[str, dict[str, int]] = field(default_factory=dict)  # net -> {"HxW": test inputs}

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
    argv = [portable_path(a, elsewhere="keep") for a in sys.argv]
    if argv and Path(argv[0]).name in {"transfigure", "cli.py", "__main__.py"} and command in argv[1:2]:
        return shlex.join(["transfigure", *argv[1:]])
    if args is None:
        return shlex.join(argv)
    paths = args.run if isinstance(args.run, (list, tuple)) else [args.run]
    parts = ["transfigure", command, *(portable_path(p, elsewhere="keep") for p in paths)]
    for key, value in vars(args).items():
        if key == "cnn_judge":  # a switch that is on unless --no-cnn-judge
            parts += [] if value else ["--no-cnn-judge"]
            continue
        if key == "run" or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        text = portable_path(value, elsewhere="keep") if isinstance(value, str) else str(value)
        parts += [flag] if value is True else [flag, text]
    return shlex.join(parts)


# -- batches ---------------------------------------------------------------------------------------
def _limited(n: int, limit: int | None) -> int:
    return n if limit is None else min(n, limit)


def dataset_batches(dataset, keys: tuple[str, ...], batch_size: int, limit: int | None) -> Iterator[tuple]:
    """Deterministic batches of ``keys`` from a dataset whose items are dicts of tensors."""
    n = _limited(len(dataset), limit)
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        yield tuple(torch.stack([it[k] for it in items]) for k in keys)


def image_file_batches(files: list[Path], crop_size: int, batch_size: int, limit: int | None) -> Iterator:
    for (x,) in dataset_batches(ImageFiles(files, crop_size), ("image",), batch_size, limit):
        yield x


def torch_fn(net, device: str = "cpu") -> ImageFn:
    """A net as an :data:`ImageFn` (eval mode, fp32, no grad)."""
    net = net.to(device).float().eval()

    def run(x):
        with torch.inference_mode():
            return net(x.to(device).float()).float().cpu()

    return run


def onnx_fn(
    path: str | Path, input_name: str = "image", output_name: str = "output", threads: int | None = None
) -> ImageFn:
    """An ONNX model as an :data:`ImageFn` (onnxruntime, CPU; ``threads``: intra-op threads, None: ORT's)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(sess.run([output_name], {input_name: x.detach().cpu().numpy()})[0])

    return run


def padded_fn(fn: ImageFn, multiple_of: int, min_side: int = MIN_TRANSLATE_SIDE) -> ImageFn:
    """``fn`` on images of any size, as ``/translate`` runs a model: reflect-pad the bottom/right to
    multiples of ``multiple_of`` (and at least ``min_side``), run, crop the output back."""
    m = max(int(multiple_of or 1), 1)

    def run(x):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        th = max(-(-h // m) * m, -(-min_side // m) * m)
        tw = max(-(-w // m) * m, -(-min_side // m) * m)
        if (th, tw) != (h, w):  # numpy's reflect repeats for pads wider than the image, like the service
            pad = ((0, 0), (0, 0), (0, th - h), (0, tw - w))
            x = torch.from_numpy(np.pad(x.detach().cpu().numpy(), pad, mode="reflect"))
        return fn(x)[..., :h, :w]

    return run


# -- test images at their own size -----------------------------------------------------------------
@dataclass(frozen=True)
class ImageRef:
    """One evaluation image: a file, or one half of a side-by-side pair file (pix2pix ``AB`` images)."""

    path: Path
    half: str = ""  # "": the whole file; "left" / "right": that half

    def load(self) -> np.ndarray:
        """H x W x 3 uint8."""
        image = load_rgb_array(self.path)
        if not self.half:
            return image
        w = image.shape[1] // 2
        if w == 0:
            raise ValueError(f"{self.path}: too narrow to hold two side-by-side images")
        return image[:, :w] if self.half == "left" else image[:, w : 2 * w]

    def key(self) -> tuple:
        """Identifies the pixels: the resolved path, its modification time and size, and the half."""
        st = self.path.stat()
        return str(self.path.resolve()), st.st_mtime_ns, st.st_size, self.half


def _same_size_groups(
    items: list[tuple[ImageRef, ...]], batch_size: int
) -> Iterator[list[tuple[np.ndarray, ...]]]:
    """The loaded images of consecutive items whose images share one size, at most ``batch_size`` at a
    time, in order; the images within an item (input and its paired target) must have one size."""
    group: list[tuple[np.ndarray, ...]] = []
    for item in items:
        arrays = tuple(ref.load() for ref in item)
        if len({a.shape for a in arrays}) > 1:
            names = " and ".join(str(ref.path) for ref in item)
            raise ValueError(f"{names}: a pair must have the same size, got {[a.shape for a in arrays]}")
        if group and (group[0][0].shape != arrays[0].shape or len(group) >= batch_size):
            yield group
            group = []
        group.append(arrays)
    if group:
        yield group


def _uint8_batch(arrays: list[np.ndarray]):
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _in_range(x8, value_range: tuple[float, float]):
    """uint8 N x C x H x W -> float32 in ``value_range``, the service's formula (exact uint8 round trip)."""
    lo, hi = value_range
    return x8.float() * ((hi - lo) / 255.0) + lo


def own_size_batches(
    items: list[tuple[ImageRef, ...]],
    batch_size: int,
    value_range: tuple[float, float] = (-1.0, 1.0),
    target_range: tuple[float, float] | None = None,
) -> Iterator[tuple]:
    """Float batches of consecutive images of equal size, each image at its own size: (inputs,) or
    (inputs, paired targets), N x 3 x H x W in ``value_range`` (targets: ``target_range``, default the same)."""
    ranges = (value_range, target_range or value_range)
    for group in _same_size_groups(items, batch_size):
        yield tuple(
            _in_range(_uint8_batch([g[k] for g in group]), ranges[min(k, 1)]) for k in range(len(group[0]))
        )


_FEATURES: dict[tuple, np.ndarray] = {}  # (ImageRef.key(), device) -> Inception features at own size
_JUDGES: dict[tuple, Any] = {}  # (training image keys of both domains, device, l2) -> DomainJudge
_DISK_CACHE: list[Path] = []  # the folder of use_feature_cache, if any


def clear_caches() -> None:
    """Forget the real-image features and judges kept for this process (not the on-disk cache)."""
    _FEATURES.clear()
    _JUDGES.clear()
    clear_judges()
    _DISK_CACHE.clear()


def _cache_file(folder: Path) -> Path:
    tag = hashlib.sha1(PROTOCOL.describe().encode()).hexdigest()[:12]  # another protocol, another file
    return folder / f"real_features_{tag}.npz"


def _cache_name(key: tuple) -> str:
    return hashlib.sha1(repr(key).encode()).hexdigest()


def use_feature_cache(folder: str | Path) -> int:
    """Keep real images' Inception features in ``folder`` across processes as well (keyed by path,
    modification time, size and the Inception protocol); returns how many were loaded."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _DISK_CACHE[:] = [folder]
    path = _cache_file(folder)
    if not path.is_file():
        return 0
    with np.load(path) as data:
        _DISK_LOADED.update({name: data[name] for name in data.files})
    return len(_DISK_LOADED)


_DISK_LOADED: dict[str, np.ndarray] = {}  # sha1 of a _FEATURES key -> features, from the disk cache


def _save_feature_cache() -> None:
    if not _DISK_CACHE:
        return
    entries = dict(_DISK_LOADED)
    entries.update({_cache_name(k): v for k, v in _FEATURES.items()})
    atomic_write(_cache_file(_DISK_CACHE[0]), lambda f: np.savez(f, **entries))


def real_features(refs: list[ImageRef], device: str = "cpu") -> np.ndarray:
    """Inception features of real images at their own size (``len(refs)`` x 2048), computed once per
    image and process."""
    keys = [(ref.key(), device) for ref in refs]
    for key in keys:
        if key not in _FEATURES and _cache_name(key) in _DISK_LOADED:
            _FEATURES[key] = _DISK_LOADED[_cache_name(key)]
    todo = [(ref, key) for ref, key in dict(zip(refs, keys, strict=True)).items() if key not in _FEATURES]
    done = 0
    for group in _same_size_groups([(ref,) for ref, _ in todo], PROTOCOL.batch_size):
        feats = inception_features([_uint8_batch([g[0] for g in group])], device=device)
        for f in feats:
            _FEATURES[todo[done][1]] = f
            done += 1
    if todo:
        _save_feature_cache()
    if not keys:
        return np.zeros((0, 2048))
    return np.stack([_FEATURES[k] for k in keys])


def domain_judge(train_a: list[ImageRef], train_b: list[ImageRef], device: str = "cpu"):
    """A :class:`training.fid.DomainJudge` fitted on these training images (A: label 0, B: label 1),
    fitted once per process."""
    judge = DomainJudge()
    key = (tuple(r.key() for r in train_a), tuple(r.key() for r in train_b), device, judge.l2)
    if key not in _JUDGES:
        _JUDGES[key] = judge.fit(real_features(train_a, device), real_features(train_b, device))
    return _JUDGES[key]


@dataclass
class TranslationImages:
    """One translate net's test and judge images, from the recipe's own splits."""

    inputs: list[tuple[ImageRef, ...]]  # test inputs: (input,) or, paired, (input, ground truth)
    targets: list[ImageRef]  # real test images of the target domain
    judge_a: list[ImageRef]  # training images the judge learns as domain "A" / "B"
    judge_b: list[ImageRef]
    target_domain: str  # "A" or "B", in the judge's terms
    tag: str  # metric suffix, e.g. "A2B"
    split: str  # which split, in words


def own_size_protocol(model: str, multiple_of: int) -> str:
    """How the test images reached the model, for every translation metric's protocol."""
    pad = (
        f", reflect-padded at the bottom/right to a multiple of {multiple_of} (at least {MIN_TRANSLATE_SIDE} px) "
        "and cropped back, as /translate does"
    )
    return f"each test image at its own size (no resize){pad}, through {model}"


def evaluate_translation(
    report: Report,
    net: str,
    fn: ImageFn,
    images: TranslationImages,
    opts: EvalOptions,
    how: str,
    in_range: tuple[float, float] = (-1.0, 1.0),
    out_range: tuple[float, float] = (-1.0, 1.0),
) -> None:
    """Every translation metric of one net on its test images at their own size (``fn`` takes any
    size: see :func:`padded_fn`); real-image features and the judge come from the process caches."""
    inputs, targets = images.inputs[: opts.limit], images.targets[: opts.limit]
    judge_a, judge_b = images.judge_a[: opts.judge_limit], images.judge_b[: opts.judge_limit]
    target_features = real_features(targets, opts.device)
    judge = domain_judge(judge_a, judge_b, opts.device)
    cnn = (
        domain_cnn_judge(judge_a, judge_b, _DISK_CACHE[0] if _DISK_CACHE else None)
        if opts.cnn_judge
        else None
    )
    result = translate_split(
        fn, own_size_batches(inputs, opts.batch_size, in_range, out_range), in_range, out_range, opts.grid_images,
        opts.device, input_features=real_features([item[0] for item in inputs], opts.device),
        scorer=cnn.prob_b if cnn is not None else None,
    )  # fmt: skip
    translation_metrics(report, net, images.tag, result, target_features, judge, images.target_domain,
                        images.split, how)  # fmt: skip
    if cnn is not None:
        real_probs = np.concatenate([cnn.prob_b(to_uint8(x, out_range)) for (x,) in
                                     own_size_batches([(t,) for t in targets], opts.batch_size, out_range)])  # fmt: skip
        cnn_judge_metrics(report, net, images, result, real_probs, cnn, how)
    report.grids[net] = result.grid
    report.image_sizes[net] = result.sizes


# -- translation -----------------------------------------------------------------------------------
@dataclass
class Translated:
    fake_features: np.ndarray
    input_features: np.ndarray
    ssim_content: list[float]
    ssim_target: list[float]
    grid: list[list[np.ndarray]]
    border_ratio: list[float] = field(default_factory=list)  # border_change_ratio per image
    l1_target: list[float] = field(default_factory=list)  # mean |output - target| per image, [0, 1] scale
    sizes: dict[str, int] = field(default_factory=dict)  # "HxW" of the inputs -> how many
    scores_fake: list[float] = field(default_factory=list)  # the scorer's value per output (if given)
    scores_input: list[float] = field(default_factory=list)  # ... and per input


def _y_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return ssim(rgb_to_y(a), rgb_to_y(b))


BORDER_PROTOCOL = (
    "per image, the mean absolute change |output - input| (uint8 RGB / 255) in each border strip "
    "(1/16 of the shorter side wide) over the mean change inside the strips (+ 1/255), the largest of "
    "the four sides; mean over images. About 1: the change does not depend on where the pixel is; a "
    "band painted along one edge gives several times 1"
)


def border_change_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """How much more a translator changes one border strip of an H x W x C image than its interior
    (:data:`BORDER_PROTOCOL`): a position artefact, such as a band along the top edge, which
    neither FID nor a domain judge penalises."""
    change = np.abs(y.astype(np.float32) - x.astype(np.float32)).mean(axis=-1) / 255
    h, w = change.shape
    k = max(1, round(min(h, w) / 16))
    if h <= 2 * k or w <= 2 * k:
        return 1.0
    inside = float(change[k:-k, k:-k].mean()) + 1 / 255
    sides = (change[:k], change[-k:], change[:, :k], change[:, -k:])
    return max(float(s.mean()) for s in sides) / inside


def translate_split(
    fn: ImageFn,
    batches: Iterable[tuple],
    in_range: tuple[float, float] = (-1.0, 1.0),
    out_range: tuple[float, float] = (-1.0, 1.0),
    grid_images: int = GRID_IMAGES,
    device: str = "cpu",
    input_features: np.ndarray | None = None,
    scorer: Callable[[Any], np.ndarray] | None = None,
) -> Translated:
    """Run ``fn`` over (input[, target]) batches; Inception features of inputs and outputs, content SSIM.

    ``input_features``: the inputs' features when already computed (same images, same order);
    ``scorer``: uint8 N x 3 x H x W -> one value per image (a judge), kept for inputs and outputs."""
    fake_f, in_f, ssim_c, ssim_t, l1_t, grid, sizes, border = [], [], [], [], [], [], {}, []
    scores_fake: list[float] = []
    scores_input: list[float] = []
    for batch in batches:
        x = batch[0]
        size = f"{x.shape[-2]}x{x.shape[-1]}"
        sizes[size] = sizes.get(size, 0) + len(x)
        y = fn(x)
        x8, y8 = to_uint8(x, in_range), to_uint8(y, out_range)
        if x8.shape[1] != y8.shape[1]:  # grey <-> colour: compare on 3 channels
            x8, y8 = x8.expand(-1, 3, -1, -1), y8.expand(-1, 3, -1, -1)
        if input_features is None:
            in_f.append(inception_features([x8], device=device))
        fake_f.append(inception_features([y8], device=device))
        if scorer is not None:
            scores_fake.extend(float(v) for v in scorer(y8))
            scores_input.extend(float(v) for v in scorer(x8))
        xs, ys = x8.permute(0, 2, 3, 1).numpy(), y8.permute(0, 2, 3, 1).numpy()
        t8 = to_uint8(batch[1], out_range).permute(0, 2, 3, 1).numpy() if len(batch) > 1 else None
        for i in range(len(xs)):
            if xs[i].shape == ys[i].shape:
                ssim_c.append(_y_ssim(xs[i], ys[i]))
                border.append(border_change_ratio(xs[i], ys[i]))
            if t8 is not None:
                ssim_t.append(_y_ssim(ys[i], t8[i]))
                l1_t.append(float(np.abs(ys[i].astype(np.float64) - t8[i].astype(np.float64)).mean() / 255))
            if len(grid) < grid_images:
                grid.append([xs[i], ys[i]] + ([t8[i]] if t8 is not None else []))
    inputs = input_features if input_features is not None else np.concatenate(in_f)
    return Translated(
        np.concatenate(fake_f), inputs, ssim_c, ssim_t, grid, border, l1_t, sizes, scores_fake, scores_input
    )


def cnn_judge_metrics(
    report: Report, net: str, images: TranslationImages, result: Translated, real_probs, cnn, how: str = ""
) -> None:
    """The independent judge's target share for outputs, untranslated inputs and real target images."""
    tag, dom = images.tag, images.target_domain
    proto = cnn.describe() + (f"; {how}" if how else "")
    n_in, n_tgt = len(result.scores_fake), len(real_probs)
    share = lambda probs: float(np.mean(cnn.predicts(np.asarray(probs), dom)))  # noqa: E731
    report.add(f"cnn_judge_target_share_{tag}", share(result.scores_fake),
               f"{images.split} ({n_in} translated)", proto, net)  # fmt: skip
    report.add(f"cnn_judge_target_share_identity_{tag}", share(result.scores_input),
               f"{images.split}: untranslated inputs", proto, net)  # fmt: skip
    report.add(f"cnn_judge_accuracy_real_target_{tag}", share(real_probs),
               f"{images.split}: real target test images ({n_tgt})", proto, net)  # fmt: skip


def features_of(batches: Iterable, value_range: tuple[float, float] = (-1.0, 1.0), device: str = "cpu"):
    """Inception features of real images given as float batches in ``value_range``."""
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
    how: str = "",
) -> None:
    """FID/KID (model and identity baseline), judge shares, content preservation for one direction.

    ``how``: how the test images reached the model (:func:`own_size_protocol`), part of each protocol."""
    proto = f"{how}; {PROTOCOL.describe()}" if how else PROTOCOL.describe()
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
        jp = f"logistic regression (L2 {judge.l2}) on Inception features, trained on the training splits only"
        jp = f"{jp}; {how}" if how else jp
        report.add(f"judge_target_share_{tag}", judge.share(result.fake_features, target_domain), sp, jp, net)
        report.add(
            f"judge_target_share_identity_{tag}", judge.share(result.input_features, target_domain),
            f"{split}: untranslated inputs", jp, net,
        )  # fmt: skip
        report.add(
            f"judge_accuracy_real_target_{tag}", judge.share(target_features, target_domain),
            f"{split}: real target test images", jp, net,
        )  # fmt: skip

    suffix = f"; {how}" if how else ""
    report.add(
        f"content_cosine_{tag}", float(np.mean(cosine_similarity(result.input_features, result.fake_features))),
        sp, COSINE_PROTOCOL + suffix, net,
    )  # fmt: skip
    if result.ssim_content:
        report.add(
            f"content_ssim_{tag}", float(np.mean(result.ssim_content)), sp, SSIM_PROTOCOL + suffix, net
        )
    if result.border_ratio:
        report.add(
            f"border_change_ratio_{tag}",
            float(np.mean(result.border_ratio)),
            sp,
            BORDER_PROTOCOL + suffix,
            net,
        )
    if result.ssim_target:
        report.add(
            f"ssim_to_target_{tag}", float(np.mean(result.ssim_target)), sp,
            "Y-SSIM of output vs its paired ground truth at the image's own size" + suffix, net,
        )  # fmt: skip
    if result.l1_target:
        report.add(
            f"l1_to_target_{tag}", float(np.mean(result.l1_target)), sp,
            "mean absolute error of output vs its paired ground truth, uint8 RGB / 255, own size" + suffix, net,
        )  # fmt: skip
    report.headline.setdefault(net, f"fid_{tag}")


def _torch_protocol(run, net: str, device: str) -> str:
    weights = "EMA weights" if run.used_ema else "weights"
    return own_size_protocol(f"the run's PyTorch {net} ({weights} of step {run.step}, {device}, fp32)",
                             int(getattr(run.nets[net], "multiple_of", 1)))  # fmt: skip


def evaluate_run_translation(
    run,
    report: Report,
    opts: EvalOptions,
    nets: Iterable[str],
    images: Callable[[Any, str], TranslationImages],
) -> None:
    """Every translation metric of a run's PyTorch ``nets`` (those it has) on their test images at
    their own size; ``images(config, net)`` gives each net's splits (the recipe's ``translation_images``)."""
    for net in nets:
        if net not in run.nets:
            continue
        gen = run.nets[net]
        fn = padded_fn(torch_fn(gen, opts.device), int(getattr(gen, "multiple_of", 1)))
        evaluate_translation(
            report, net, fn, images(run.config, net), opts, _torch_protocol(run, net, opts.device)
        )


@dataclass
class TranslationData:
    """The recipe's own splits for one translate net: factories of float batches in [-1, 1]."""

    test_inputs: Callable[[int | None, int], Iterator[tuple]]  # (limit, batch) -> (x,) or (x, target)
    test_targets: Callable[[int | None, int], Iterator]
    train_inputs: Callable[[int | None, int], Iterator]
    split: str


def translation_fid(fn: ImageFn, data: TranslationData, opts: EvalOptions, target_features=None) -> float:
    """FID of ``fn``'s translations of the test inputs against the real test targets."""
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
    lo, hi = value_range

    def upscale(lr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(lr, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0  # a writable copy
        y = fn(x * (hi - lo) + lo)[0].float()
        return as_uint8(((y - lo) / (hi - lo)).clamp(0, 1).permute(1, 2, 0).numpy())

    return upscale


def evaluate_upscale(
    run, report: Report, opts: EvalOptions, hr_dir: str | Path, spec, net: str = "G"
) -> None:
    """PSNR/SSIM/sharpness of a run's upscaler ``net`` (interface ``spec``, an ExportSpec) on the HR
    images of ``hr_dir``, next to the bicubic baseline through the same code path."""
    scale = int(spec.scale)
    files = list_images(hr_dir)[: opts.limit] if opts.limit else list_images(hr_dir)
    model = evaluate_upscaler(upscaler_from_fn(torch_fn(run.nets[net], opts.device), spec.input_range),
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
    report.grids[net] = sr_grid(run.nets[net], spec, files[: opts.grid_images], opts)


def sr_grid(net, spec, files: list[Path], opts: EvalOptions) -> list[list[np.ndarray]]:
    up = upscaler_from_fn(torch_fn(net, opts.device), spec.input_range)
    rows = []
    for f in files:
        hr = crop_to_multiple(load_rgb_array(f), spec.scale)
        lr = bicubic_downscale(hr, spec.scale)
        rows.append([bicubic_upscale(lr, spec.scale), up(lr), hr])
    return rows


# -- the report ------------------------------------------------------------------------------------
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


def report_prefix(folder: Path, several: bool) -> str:
    """What ``transfigure evaluate --out DIR`` puts before a folder's report name: the folder's
    name when one command evaluates several folders into one DIR, else nothing."""
    return f"{folder.name}_" if several else ""


def write_report(report: Report, out: Path, name: str, extra: dict[str, Any], title: str) -> Path:
    """``out/<name>.json``, ``out/<name>.md`` and ``out/<name>_<net>.png``; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    body = {**extra, "command": report.command, "metrics": report.metrics, "headline": report.headline,
            "image_sizes": report.image_sizes, "per_image": report.per_image}  # fmt: skip
    path = atomic_write_json(out / f"{name}.json", body, default=float)
    (out / f"{name}.md").write_text(markdown_table(report, f"{title}: {name}"))
    for net, rows in report.grids.items():
        if rows:
            (out / f"{name}_{net}.png").write_bytes(grid_png(rows, cell=96))
    return path


def translate_recipes() -> list[str]:
    """The registered recipes whose zoo model folders can be evaluated (they provide ``translation_images``)."""
    return [name for name in recipe_names() if hasattr(recipe_module(name), "translation_images")]


def is_model_folder(path: str | Path) -> bool:
    """A zoo model folder (``card.json`` + its ONNX file) rather than a training run folder."""
    return (Path(path) / CARD_FILE).is_file()


def evaluate_run(
    run_dir: str | Path,
    data: str | None = None,
    name: str | None = None,
    options: EvalOptions = EvalOptions(),
    judge: str | None = None,
    command: str | None = None,
    out: str | Path | None = None,
    prefix: str = "",
) -> Path:
    """Evaluate a run folder; returns the path of the JSON report ``<prefix><name>.json`` (in ``out``,
    default ``RUN/eval``)."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    recipe = recipe_module(run.recipe)
    run.config = with_data(recipe, run.config, data)
    if not hasattr(recipe, "evaluate"):
        raise ValueError(f"recipe '{run.recipe}' has nothing to evaluate (its nets are not exported)")
    report = Report(command=command or command_line())
    named_after = recipe.evaluate(run, report, options, data, judge)
    if name is None and options.truncation is not None:  # beside, not over, the untruncated report
        name = f"{Path(named_after).name if named_after else 'test'}_psi{options.truncation:g}"
    name = prefix + (name or (Path(named_after).name if named_after else "test") or "test")
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
    target = Path(out) if out is not None else run_dir / EVAL_DIR
    return write_report(report, target, name, extra, f"{run.recipe} {run_dir.name}")


def evaluate_model(
    folder: str | Path,
    data: str | None = None,
    name: str | None = None,
    options: EvalOptions = EvalOptions(),
    command: str | None = None,
    out: str | Path | None = None,
    prefix: str = "",
) -> Path:
    """Evaluate a zoo translate model's ONNX file as shipped; returns the path of the JSON report
    ``<prefix><name>.json`` (in ``out``, default ``FOLDER/eval``). The splits come from the card's ``training.recipe_config``;
    ``data`` replaces its data folder."""
    folder = Path(folder)
    card = ModelCard.load(folder)
    saved = card.training.recipe_config
    recipe = str(saved.get("recipe", card.method))
    mod = recipe_module(recipe) if card.task == "translate" else None
    if mod is None or not hasattr(mod, "translation_images"):
        raise ValueError(
            f"{folder}: a zoo folder is evaluated for translate models ({', '.join(translate_recipes())}); "
            f"'{card.name}' is a {card.task} model ({card.method}): evaluate its training run instead"
        )
    assert card.input is not None  # translate cards always have one
    if card.input.channels != 3:
        raise ValueError(f"{folder}: evaluation takes RGB inputs; '{card.name}' takes {card.input.channels}")
    onnx_path = card.verify_file(folder)  # the file the card describes, sha256 checked
    config = with_data(mod, config_from_dict(mod.Config, saved.get("config", saved)), data)
    net = str(saved.get("net") or mod.TRANSLATE_NETS[0])
    try:
        images = mod.translation_images(config, net)
    except EmptyFolderError as e:
        if data:
            raise
        raise EmptyFolderError(f"{e} (the data folder named by the card; pass --data DIR)") from None
    report = Report(command=command or command_line())
    how = own_size_protocol(
        f"the ONNX file as shipped ({folder.name}/{card.onnx_file}, {card.precision}, onnxruntime CPU)",
        card.input.multiple_of,
    )
    fn = padded_fn(onnx_fn(onnx_path), card.input.multiple_of)
    evaluate_translation(
        report, net, fn, images, options, how, tuple(card.input.range), tuple(card.output.range)
    )
    extra = {
        "model": str(folder),
        "name": card.name,
        "onnx_file": str(onnx_path),
        "sha256": card.sha256,
        "precision": card.precision,
        "recipe": recipe,
        "net": net,
        "step": card.training.steps,
        "data": config.data,
        "fid_protocol": PROTOCOL.describe(),
        "limit": options.limit,
    }
    name = prefix + (name or Path(config.data).name or "test")
    target = Path(out) if out is not None else folder / EVAL_DIR
    return write_report(report, target, name, extra, f"{card.name} ({card.onnx_file}, {card.precision})")


# -- class-conditional sampling --------------------------------------------------------------------
SAMPLES_PER_CLASS = 100


def penultimate_features(net, x):
    """The input of the classifier's last Linear layer (its feature space), via a forward hook."""
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
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c in range(num_classes):
        z = torch.randn(n_per_class, latent_dim, generator=g)
        label = torch.full((n_per_class,), c, dtype=torch.int64)
        images.append(fn(z, label).float())
        labels.append(label)
    return torch.cat(images), torch.cat(labels)


def takes_truncation(net) -> bool:
    """Whether ``net`` is a sampler that takes a truncation ``psi`` (a style generator)."""
    return "psi" in inspect.signature(net.forward).parameters


def torch_sample_fn(net, truncation: float | None = None) -> SampleFn:
    """``(z, label) -> images`` of ``net``; ``truncation``: the psi a style generator samples with."""
    net = net.float().eval()
    if truncation is not None and not takes_truncation(net):
        raise ValueError(
            f"--truncation needs a style generator (`transfigure train cgan --generator style`); "
            f"this run's generator is a {type(net).__name__}"
        )

    def run(z, label):
        with torch.inference_mode():
            if truncation is None:
                return net(z, label).float()
            return net(z, label, psi=torch.full((len(z),), float(truncation))).float()

    return run


def sample_judge_accuracy(fn: SampleFn, spec, judge, judge_size: int | None, n_per_class: int) -> float:
    """Mean over classes of the share of samples the judge assigns to their class (int8 checks)."""
    images, labels = generate_samples(fn, len(spec.classes), spec.latent_dim, n_per_class)
    _, pred = judge_images(judge, images, judge_size)
    return float((pred == labels.numpy()).mean())


def evaluate_samples(
    run,
    report: Report,
    opts: EvalOptions,
    real: tuple[Any, np.ndarray],
    judge,
    judge_size: int | None,
    judge_name: str,
    net: str = "G",
    n_per_class: int | None = None,
) -> None:
    """Judge accuracy, judge-space FID and per-class diversity of a class-conditional sampler ``net``
    (``G(z, label)``) of ``run``, whose config names its ``classes`` and ``latent_dim``, against the
    real test images ``real`` = (N x C x S x S in [-1, 1], labels). ``judge``: a classifier whose last
    Linear layer's input is its feature space, fed images resized to ``judge_size``; ``judge_name``
    says which one in every protocol."""
    cfg = run.config
    classes = list(cfg.classes)
    real_x, real_y = real
    n = n_per_class or min(SAMPLES_PER_CLASS, opts.limit or SAMPLES_PER_CLASS)
    if opts.limit:  # at most `limit` real images per class
        keep = np.concatenate([np.flatnonzero(real_y == c)[: opts.limit] for c in range(len(classes))])
        real_x, real_y = real_x[keep], real_y[keep]
    size = judge_size
    real_f, real_pred = judge_images(judge, real_x, size)
    sample_fn = torch_sample_fn(run.nets[net], opts.truncation)
    fake_x, fake_y = generate_samples(sample_fn, len(classes), cfg.latent_dim, n)
    fake_y = fake_y.numpy()
    fake_f, fake_pred = judge_images(judge, fake_x, size)
    jp = f"judge: {judge_name} (penultimate-layer features for FID/diversity)"
    psi = f", truncation psi={opts.truncation:g}" if opts.truncation is not None else ""
    sp = f"{n} samples per class (seed 0{psi}) vs the test split ({len(real_y)} images)"
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
        report.add(f"judge_accuracy_samples_{name}", acc_fake, f"class {name}: {n} samples{psi}", jp, net)
        if rm.any():  # no NaN in reports: a class without test images gets no real-image figure
            report.add(f"judge_accuracy_real_{name}", acc_real, f"class {name}: test split", jp, net)
        report.add(f"diversity_samples_{name}", div_fake, f"class {name}: {n} samples{psi}",
                   "mean pairwise L2 distance of judge features; " + jp, net)  # fmt: skip
        if rm.any():
            report.add(f"diversity_real_{name}", div_real, f"class {name}: test split",
                       "mean pairwise L2 distance of judge features; " + jp, net)  # fmt: skip
    report.per_image[net] = per_class
    report.headline.setdefault(net, "judge_accuracy_samples")

    rows = []
    for c in range(len(classes)):
        imgs = to_uint8(fake_x[fake_y == c][:8]).permute(0, 2, 3, 1).numpy()
        rows.append(list(imgs))
    report.grids[net] = rows


# -- CLI -------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", nargs="+", metavar="PATH",
        help="training run folder (with checkpoints/last.pt) or zoo model folder (card.json + model.onnx; "
        "translate models); several are measured in one process, computing real images' features once",
    )  # fmt: skip
    parser.add_argument(
        "--data", default=None, help="dataset folder (default: the run's or card's --data); SR: HR images"
    )
    parser.add_argument(
        "--name", default=None, help="report name: PATH/eval/NAME.json (default: data folder name)"
    )
    parser.add_argument(
        "--out", default=None,
        help="write the reports to this folder instead of PATH/eval (as <PATH name>_NAME for several paths)",
    )  # fmt: skip
    parser.add_argument(
        "--limit", type=int, default=None, help="at most N test images per split (quick checks)"
    )
    parser.add_argument(
        "--judge-limit", type=int, default=500, help="training images per domain for the judge"
    )
    parser.add_argument("--judge", default=None, help="cgan: a classifier run folder used as the judge")
    parser.add_argument(
        "--truncation", type=float, default=None, metavar="PSI",
        help="cgan with a style generator: sample with truncation psi in [0, 1] (default: none, i.e. 1)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--feature-cache", default=None, metavar="DIR",
        help="keep real images' Inception features (and the fitted CNN judge) in DIR across runs "
        "(keyed by file, mtime and protocol)",
    )  # fmt: skip
    parser.add_argument(
        "--no-cnn-judge", dest="cnn_judge", action="store_false",
        help="translate: skip the independent judge (a CNN trained from scratch on the training splits)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    opts = EvalOptions(
        limit=args.limit,
        judge_limit=args.judge_limit,
        batch_size=args.batch_size,
        device=args.device,
        cnn_judge=getattr(args, "cnn_judge", True),
        truncation=getattr(args, "truncation", None),
    )
    if opts.truncation is not None and not 0.0 <= opts.truncation <= 1.0:
        print(f"transfigure evaluate: --truncation must be in [0, 1], got {opts.truncation}", file=sys.stderr)
        return 1
    command = command_line(args)
    if getattr(args, "feature_cache", None):
        use_feature_cache(args.feature_cache)
    paths = [Path(p) for p in (args.run if isinstance(args.run, (list, tuple)) else [args.run])]
    for path in paths:
        prefix = report_prefix(path, bool(args.out) and len(paths) > 1)
        try:
            if is_model_folder(path):
                if args.judge:
                    raise ValueError("--judge is for cgan training runs, not zoo model folders")
                report = evaluate_model(path, args.data, args.name, opts, command, args.out, prefix)
            else:
                report = evaluate_run(path, args.data, args.name, opts, args.judge, command, args.out, prefix)
        except (InceptionUnavailable, FileNotFoundError, ValueError, CardError) as e:
            print(f"transfigure evaluate: {e}", file=sys.stderr)
            return 1
        print(report.with_suffix(".md").read_text())
        print(f"report: {report}")
    return 0
