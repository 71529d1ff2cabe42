"""Translate, upscale or sample many images: resumable, sharded, every output written atomically.

    transfigure batch --model NAME --input DIR|GLOB|MANIFEST --output DIR [--task translate|upscale]
    transfigure batch --model quickdraw_cgan --label cat --n 1000 --output DIR      (sampling)

Inputs (``--input``):
* a folder: every image below it (hidden files and folders, and ``--output`` if it lies inside,
  are ignored); outputs mirror the tree;
* a glob (``'photos/**/*.jpg'``, quoted): paths are relative to the glob's folder part;
* a manifest, ``*.txt``: one input path per line, relative to the manifest's folder (blank lines
  and ``#`` comments ignored); or ``*.jsonl``: one ``{"input": ..., "output": ...}`` object per
  line, ``output`` optional and relative to ``--output``. Absolute paths and ``..`` are refused
  (the whole manifest is, before any work), so no entry can escape either folder;
* a single image file.

An output is ``<output>/<relative path>`` with the format's extension (``a/b.jpg`` ->
``a/b.png``; if two inputs would meet, e.g. ``b.jpg`` and ``b.png``, both keep their own
extension: ``b.jpg.png``). Sampling writes ``<output>/<label>/<label>-<i>.png`` where image ``i``
uses seed ``--seed + i``, the same image ``POST /sample`` gives for ``n=1`` and that seed. A
style-based model also takes ``--truncation PSI`` and ``--mix-seed S --mix-layer L`` (image ``i``
mixes with seed ``S + i``): the image ``/sample`` gives for ``n=1`` with the same ``truncation``
and ``mix``.

Sharding: an input belongs to shard ``blake2b(relative input path) mod --shard-count`` (sample
``i`` to shard ``i mod count``), so the shards cover every input exactly once and an input never
changes shard when others are added. ``--shard-index`` defaults to ``$JOB_COMPLETION_INDEX``
(a Kubernetes Indexed Job) and ``--shard-count`` to ``$TRANSFIGURE_SHARD_COUNT``.

Safety: each output goes to ``.<name>.part`` in its own folder, is fsynced, then renamed over the
final name, so a crash or SIGKILL never leaves a truncated output, and outputs that exist are
skipped on the next run (``--overwrite`` redoes them). A bad input is recorded as failed and the
run goes on. Each shard appends JSON lines ``{"input", "output", "status", "error", "ms"}``
(status ``ok`` | ``skipped`` | ``failed``) to ``<output>/.transfigure/report-<i>-of-<n>.jsonl``
and writes a summary JSON beside it. Exit status: 0 all done, 1 some inputs failed (0 with
``--allow-failures``), 2 a usage problem (bad manifest, unknown model, no inputs).

Sizes: as in the service, an image is translated at its own resolution unless ``--max-side`` (or
``TRANSFIGURE_MAX_SIDE``) asks for a downscale first; a model whose network runs at full resolution
(card ``input.multiple_of`` > 1) runs on a copy at most ``--fullres-max-side`` (or
``TRANSFIGURE_FULLRES_MAX_SIDE``, default 1024) px a side, its output resized back to the image's
size, and the report line of such an output carries ``"processed_size": "WxH"`` (``service.imaging``).

Only the ``serve`` extra is needed: this module imports onnxruntime, numpy, Pillow and tqdm, never torch.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import signal
import stat
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from models import card_paths
from models.card import CardError
from models.files import atomic_write, part_path
from service import sampling
from service.config import Settings, SettingsError, load_settings
from service.imaging import (
    FORMATS,
    INPUT_FORMATS,
    DecodedImage,
    ImageError,
    Limits,
    decode_image,
    encode_image,
    network_size,
    normalize_format,
    resize_to_max_side,
    samples_to_uint8,
    translate_images,
    upscale_image,
)
from service.providers import plan_from_settings
from service.zoo import LoadedModel, ModelNotFound, WrongTask, Zoo, cpu_count

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MANIFEST_TEXT = {".txt", ".lst", ".list"}
MANIFEST_JSONL = {".jsonl", ".ndjson"}
STATE_DIR = ".transfigure"  # reports and summaries, inside --output (hidden: never read as input)
EXT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# Files in a batch job are not uploads: allow bigger files than the HTTP limit, but still bounded.
BATCH_MAX_BYTES = 256 * 1024 * 1024
# Images are translated at their own resolution, so memory is bounded in pixels: images of one size
# share an inference only up to BATCH_MAX_PIXELS (12-MP photos run one at a time), and the images
# decoded ahead of the running one hold at most WINDOW_MAX_PIXELS per window (declared sizes).
BATCH_MAX_PIXELS = 1 << 20
WINDOW_MAX_PIXELS = 48_000_000

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TERMINATED = 0, 1, 2, 143


class UsageError(ValueError):
    """A problem with the command line or the inputs as a whole: nothing is processed (exit 2)."""


# -- planning: what to make, and where ----------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One output to make. ``key`` is its stable identity: it decides the shard and names it in reports."""

    key: str
    output: Path
    source: Path | None = None  # input image (None when sampling)
    seed: int | None = None  # sampling only
    index: int | None = None  # sampling: the image's position i (its seed is --seed + i)


def safe_relpath(raw: str, what: str = "path") -> PurePosixPath:
    """A relative path that stays inside its folder; raises ValueError for absolute paths and ``..``."""
    text = raw.strip().replace("\\", "/")
    if not text:
        raise ValueError(f"empty {what}")
    p = PurePosixPath(text)
    if p.is_absolute() or (len(text) > 1 and text[1] == ":"):  # also refuse Windows drive paths
        raise ValueError(f"{what} '{raw}' is absolute; use a path relative to the manifest's folder")
    if ".." in p.parts:
        raise ValueError(f"{what} '{raw}' contains '..'; paths may not leave their folder")
    parts = [s for s in p.parts if s != "."]
    if not parts:
        raise ValueError(f"{what} '{raw}' names no file")
    return PurePosixPath(*parts)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk_images(root: Path, exclude: Path | None) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # hidden folders hold our own state (.transfigure) and VCS data; prune them and --output
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        for name in sorted(filenames):
            if not name.startswith(".") and _is_image(here / name):
                yield here / name


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: outputs are relative to it."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def read_manifest(path: Path) -> list[tuple[Path, PurePosixPath, PurePosixPath | None]]:
    """(input file, its relative path, relative output or None) for each entry; all-or-nothing.

    Every bad line is reported at once (up to 10) so a user can fix the manifest in one go.
    """
    folder = path.parent
    jsonl = path.suffix.lower() in MANIFEST_JSONL
    entries: list[tuple[Path, PurePosixPath, PurePosixPath | None]] = []
    problems: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                out_rel = None
                if jsonl:
                    obj = json.loads(text)
                    if not isinstance(obj, dict) or not isinstance(obj.get("input"), str):
                        raise ValueError('each line must be a JSON object with a string "input"')
                    rel = safe_relpath(obj["input"], "input")
                    if obj.get("output") is not None:
                        if not isinstance(obj["output"], str):
                            raise ValueError('"output" must be a string')
                        out_rel = safe_relpath(obj["output"], "output")
                else:
                    rel = safe_relpath(text, "input")
                entries.append((folder / rel, rel, out_rel))
            except (ValueError, json.JSONDecodeError) as e:
                problems.append(f"  line {lineno}: {e}")
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise UsageError(f"manifest {path} refused:\n" + "\n".join(problems[:10]) + more)
    return entries


def find_inputs(spec: str, output_dir: Path) -> list[tuple[Path, PurePosixPath, PurePosixPath | None]]:
    """Resolve ``--input`` (folder, glob, manifest or one image) to (file, relative path, output or None)."""
    path = Path(spec)
    if path.is_dir():
        exclude = output_dir.resolve()
        return [(p, PurePosixPath(p.relative_to(path).as_posix()), None) for p in _walk_images(path, exclude)]
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in MANIFEST_TEXT | MANIFEST_JSONL:
            return read_manifest(path)
        if _is_image(path):
            return [(path, PurePosixPath(path.name), None)]
        raise UsageError(
            f"--input {spec}: not an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a manifest "
            f"({', '.join(sorted(MANIFEST_TEXT | MANIFEST_JSONL))})"
        )
    if glob.has_magic(spec):
        base = _glob_base(spec)
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True))
        files = [p for p in found if p.is_file() and _is_image(p)]
        return [(p, PurePosixPath(p.relative_to(base).as_posix()), None) for p in files]
    raise UsageError(f"--input {spec}: no such file or folder (give a folder, a quoted glob or a manifest)")


def plan_files(
    entries: list[tuple[Path, PurePosixPath, PurePosixPath | None]], output_dir: Path, fmt: str
) -> list[Item]:
    """One Item per distinct input; outputs mirror the relative paths with the format's extension."""
    ext = EXT[fmt]
    seen: set[str] = set()
    unique = []
    for src, rel, out_rel in entries:  # a manifest may list a file twice: make it once
        if rel.as_posix() not in seen:
            seen.add(rel.as_posix())
            unique.append((src, rel, out_rel))
    default_names = {rel.as_posix(): rel.with_suffix(ext).as_posix() for _, rel, out in unique if out is None}
    counts: dict[str, int] = defaultdict(int)
    for name in default_names.values():
        counts[name] += 1
    items, taken = [], {}
    for src, rel, out_rel in unique:
        if out_rel is not None:
            name = out_rel.as_posix()
        else:
            name = default_names[rel.as_posix()]
            if counts[name] > 1:  # b.jpg and b.png would both be b.png: keep each one's extension
                name = rel.as_posix() + ext
        if name in taken:
            raise UsageError(
                f"inputs '{taken[name]}' and '{rel}' would both write '{name}': give distinct outputs"
            )
        taken[name] = rel.as_posix()
        items.append(Item(key=rel.as_posix(), output=output_dir / name, source=src))
    return items


def plan_samples(label: str, n: int, seed: int, output_dir: Path, fmt: str) -> list[Item]:
    width = max(6, len(str(n - 1)))
    return [
        Item(
            key=f"{label}/{i}",
            output=output_dir / label / f"{label}-{i:0{width}d}{EXT[fmt]}",
            seed=seed + i,
            index=i,
        )
        for i in range(n)
    ]


def shard_of(key: str, count: int) -> int:
    """A stable shard for ``key``: the same on every machine and Python version (unlike ``hash``)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def select_shard(items: list[Item], index: int, count: int, by_position: bool = False) -> list[Item]:
    if by_position:  # sampling: item i is sample i, so round-robin balances exactly
        return [it for i, it in enumerate(items) if i % count == index]
    return [it for it in items if shard_of(it.key, count) == index]


def check_inside(path: Path, root: Path) -> None:
    """Refuse an output whose real location is outside ``root`` (e.g. through a symlinked folder)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path.parent)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ImageError(f"output {path} would be written outside {root} (a symlink?); refused")


# -- writing -------------------------------------------------------------------------------------


def is_complete(path: Path) -> bool:
    """An output that exists was renamed into place whole (see atomic_write)."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


class Report:
    """Append-only JSON lines, one per item, flushed as they come (a killed run keeps its lines)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A SIGKILL may have cut the last line short: start ours on a fresh line.
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
            if needs_newline:
                with open(path, "ab") as f:
                    f.write(b"\n")
        self.path = path
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._f.fileno())
        self._f.close()


def read_report(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a report (a line cut short by a kill is ignored)."""
    records = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                if line.endswith("\n"):
                    records.append(json.loads(line))
    return records


# -- running the model ---------------------------------------------------------------------------


@dataclass
class Options:
    """Everything a shard needs besides its items; defaults match the HTTP service's."""

    task: str
    fmt: str = "png"
    quality: int = 95
    limits: Limits = field(default_factory=Limits)
    max_side: int | None = None  # translate: downscale the longer side to this first
    # translate, full-resolution networks (card input.multiple_of > 1): run at most this side, resize back
    fullres_max_side: int | None = field(default_factory=lambda: Limits().fullres_max_side)
    tile: int = 256
    overlap: int = 16
    label: int = 0  # sampling: class index
    truncation: float = 1.0  # sampling, style models: psi
    mix: sampling.Mix | None = None  # sampling, style models: the seed of image 0's mix and the layer
    batch_size: int = 4
    io_threads: int = 2
    overwrite: bool = False


@dataclass
class Outcome:
    item: Item
    status: str  # ok | skipped | failed
    error: str = ""
    ms: float = 0.0
    processed_size: tuple[int, int] | None = None  # translate: the size the network ran at, when smaller


def _load(item: Item, opts: Options) -> DecodedImage:
    assert item.source is not None
    try:
        size = item.source.stat().st_size
    except OSError as e:
        raise ImageError(f"cannot read the input: {e.strerror or e}") from None
    if size > opts.limits.max_bytes:  # decide before reading a huge file into memory
        raise ImageError(f"the file is {size} bytes; the limit is {opts.limits.max_bytes} (--max-bytes)")
    img = decode_image(item.source.read_bytes(), opts.limits)
    if opts.task == "translate":
        img = resize_to_max_side(img, opts.max_side)
    elif opts.task == "upscale":
        w, h = img.size
        if w * h > opts.limits.max_upscale_pixels:
            raise ImageError(
                f"image is {w}x{h}; upscale inputs are limited to {opts.limits.max_upscale_pixels} pixels "
                "(TRANSFIGURE_MAX_UPSCALE_PIXELS)"
            )
    return img


def _seed(item: Item) -> int:
    assert item.seed is not None, "sample items carry their seed"
    return item.seed


def _declared_pixels(item: Item) -> int:
    """Width x height from the file's header (0 if unreadable: loading it reports the problem)."""
    try:
        if item.source is None or not stat.S_ISREG(item.source.stat().st_mode):
            return 0  # e.g. a FIFO: opening it would block this thread, not an I/O thread
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(item.source, formats=INPUT_FORMATS) as im:  # reads the header only
                return im.width * im.height
    except Exception:  # noqa: BLE001 - any failure is reported when the item is loaded
        return 0


def _windows(items: list[Item], max_items: int, max_pixels: int) -> Iterator[list[Item]]:
    """Consecutive runs of at most ``max_items`` items and ``max_pixels`` declared pixels (at least one)."""
    window: list[Item] = []
    pixels = 0
    for item in items:
        n = _declared_pixels(item)
        if window and (len(window) >= max_items or pixels + n > max_pixels):
            yield window
            window, pixels = [], 0
        window.append(item)
        pixels += n
    if window:
        yield window


def _error_text(e: BaseException) -> str:
    # ImageError messages are written for users; anything else gets its type so a log reader can search it
    return str(e) if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"


class ShardRunner:
    """Runs one shard: decode in a thread pool, infer same-size batches, encode + write in the pool."""

    def __init__(self, model: LoadedModel, opts: Options, output_dir: Path, report: Report) -> None:
        self.model, self.opts, self.output_dir, self.report = model, opts, output_dir, report
        self.stop = threading.Event()

    def _record(self, out: Outcome) -> Outcome:
        self.report.write(
            {
                "input": out.item.key,
                "output": os.path.relpath(out.item.output, self.output_dir),
                "status": out.status,
                "error": out.error or None,
                "ms": round(out.ms, 1),
                **({"seed": out.item.seed} if out.item.seed is not None else {}),
                **({"processed_size": "{}x{}".format(*out.processed_size)} if out.processed_size else {}),
            }
        )
        return out

    def _save(self, item: Item, img: DecodedImage | np.ndarray, t0: float) -> Outcome:
        try:
            data, _ = encode_image(img, self.opts.fmt, self.opts.quality)
            atomic_write(item.output, data)
        except Exception as e:  # a full disk or a read-only folder fails this item, not the run
            with contextlib.suppress(OSError):
                part_path(item.output).unlink()
            return self._record(Outcome(item, "failed", _error_text(e), (time.perf_counter() - t0) * 1e3))
        processed = img.processed_size if isinstance(img, DecodedImage) else None
        return self._record(Outcome(item, "ok", "", (time.perf_counter() - t0) * 1e3, processed))

    def todo(self, items: list[Item]) -> tuple[list[Item], list[Outcome]]:
        """Split into work and already-complete outputs; stale ``.part`` files of this shard are removed."""
        work, done = [], []
        for item in items:
            with contextlib.suppress(FileNotFoundError):
                part_path(item.output).unlink()  # only this shard writes this output: the .part is stale
            try:
                check_inside(item.output, self.output_dir)
            except ImageError as e:
                done.append(self._record(Outcome(item, "failed", str(e))))
                continue
            if not self.opts.overwrite and is_complete(item.output):
                done.append(self._record(Outcome(item, "skipped")))
            else:
                work.append(item)
        return work, done

    def run(self, items: list[Item], on_done: Callable[[Outcome], None]) -> list[Outcome]:
        if self.opts.task == "sample":
            return self._run_samples(items, on_done)
        return self._run_images(items, on_done)

    def _run_samples(self, items: list[Item], on_done: Callable[[Outcome], None]) -> list[Outcome]:
        card, opts = self.model.card, self.opts
        assert card.latent_dim is not None

        def rows_of(item: Item) -> np.ndarray:
            # one z per image from its own seed: the file does not depend on batching or sharding
            assert card.latent_dim is not None and item.index is not None
            mix = None
            if opts.mix is not None:  # image i mixes with seed --mix-seed + i
                mix = sampling.Mix(opts.mix.seed + item.index, opts.mix.layer)
            controls = sampling.Controls(truncation=opts.truncation, mix=mix)
            return sampling.plan_rows(card, 0, card.latent_dim, opts.label, 1, _seed(item), controls)

        outcomes: list[Outcome] = []
        with ThreadPoolExecutor(self.opts.io_threads, thread_name_prefix="write") as pool:
            pending: list[Future[Outcome]] = []
            for start in range(0, len(items), self.opts.batch_size):
                if self.stop.is_set():
                    break
                chunk = items[start : start + self.opts.batch_size]
                t0 = time.perf_counter()
                rows = np.concatenate([rows_of(it) for it in chunk])
                try:
                    feeds = sampling.feeds(card, rows, card.latent_dim)
                    images = samples_to_uint8(self.model, self.model.run(feeds))
                except Exception as e:
                    for it in chunk:
                        outcomes.append(self._record(Outcome(it, "failed", _error_text(e))))
                        on_done(outcomes[-1])
                    continue
                for it, img in zip(chunk, images, strict=True):
                    pending.append(pool.submit(self._save, it, img, t0))
                pending = self._drain(pending, outcomes, on_done, keep=2 * self.opts.batch_size)
            self._drain(pending, outcomes, on_done, keep=0)
        return outcomes

    def _infer(self, batch: list[tuple[Item, DecodedImage]]) -> list[DecodedImage]:
        imgs = [img for _, img in batch]
        if self.opts.task == "translate":
            return translate_images(self.model, imgs, self.opts.fullres_max_side)
        return [upscale_image(self.model, img, self.opts.tile, self.opts.overlap) for img in imgs]

    def _run_images(self, items: list[Item], on_done: Callable[[Outcome], None]) -> list[Outcome]:
        opts = self.opts
        outcomes: list[Outcome] = []
        # A window of a few batches (and at most WINDOW_MAX_PIXELS) is decoded ahead while the current
        # one runs; within a window, images of the same size share an inference.
        window = max(1, opts.batch_size * 4)
        with ThreadPoolExecutor(opts.io_threads, thread_name_prefix="io") as pool:

            def submit(chunk: list[Item]) -> list[tuple[Item, float, Future[DecodedImage]]]:
                return [(it, time.perf_counter(), pool.submit(_load, it, opts)) for it in chunk]

            pending: list[Future[Outcome]] = []
            windows = _windows(items, window, WINDOW_MAX_PIXELS)
            ahead = submit(next(windows, []))
            while ahead:
                current, ahead = ahead, submit(next(windows, []))
                if self.stop.is_set():
                    for _, _, fut in ahead:
                        fut.cancel()
                    break
                groups: dict[tuple[int, int], list[tuple[Item, DecodedImage, float]]] = defaultdict(list)
                for it, t0, fut in current:
                    try:
                        img = fut.result()
                    except Exception as e:
                        outcomes.append(
                            self._record(
                                Outcome(it, "failed", _error_text(e), (time.perf_counter() - t0) * 1e3)
                            )
                        )
                        on_done(outcomes[-1])
                        continue
                    groups[img.rgb.shape[:2]].append((it, img, t0))
                batches = []
                for (h, w), g in groups.items():
                    run_w, run_h = (w, h)
                    if opts.task == "translate":  # the network's own size is what an inference holds
                        run_w, run_h = network_size(self.model.card, (w, h), opts.fullres_max_side)
                    n = max(1, min(opts.batch_size, BATCH_MAX_PIXELS // (run_w * run_h)))
                    batches += [g[i : i + n] for i in range(0, len(g), n)]
                for b in batches:
                    pending += self._infer_and_save(pool, b, outcomes, on_done)
                pending = self._drain(pending, outcomes, on_done, keep=2 * opts.batch_size)
            self._drain(pending, outcomes, on_done, keep=0)
        return outcomes

    def _infer_and_save(
        self,
        pool: ThreadPoolExecutor,
        batch: list[tuple[Item, DecodedImage, float]],
        outcomes: list[Outcome],
        on_done: Callable[[Outcome], None],
    ) -> list[Future[Outcome]]:
        try:
            results = self._infer([(it, img) for it, img, _ in batch])
        except Exception as e:
            if len(batch) > 1:  # find the culprit: run each image alone
                futures: list[Future[Outcome]] = []
                for one in batch:
                    futures += self._infer_and_save(pool, [one], outcomes, on_done)
                return futures
            it, _, t0 = batch[0]
            outcomes.append(
                self._record(Outcome(it, "failed", _error_text(e), (time.perf_counter() - t0) * 1e3))
            )
            on_done(outcomes[-1])
            return []
        return [pool.submit(self._save, it, out, t0) for (it, _, t0), out in zip(batch, results, strict=True)]

    @staticmethod
    def _drain(
        pending: list[Future[Outcome]], outcomes: list[Outcome], on_done: Callable[[Outcome], None], keep: int
    ) -> list[Future[Outcome]]:
        """Collect finished writes; wait for the oldest while more than ``keep`` are in flight (bounded memory)."""
        still = []
        for i, fut in enumerate(pending):
            if fut.done() or len(pending) - i > keep:
                outcomes.append(fut.result())
                on_done(outcomes[-1])
            else:
                still.append(fut)
        return still


# -- the command ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo model name (see `transfigure models`)")
    p.add_argument(
        "--task",
        choices=["translate", "upscale", "sample"],
        default=None,
        help="what to do (default: the model's task; --label/--n imply sample)",
    )
    p.add_argument("--input", help="input folder, quoted glob, manifest (.txt / .jsonl) or one image")
    p.add_argument(
        "--output", required=True, type=Path, help="output folder (created; mirrors the input tree)"
    )
    p.add_argument("--format", default="png", help=f"output format: {', '.join(FORMATS)} (default: png)")
    p.add_argument("--quality", type=int, default=95, help="jpeg / webp quality (default: 95)")
    p.add_argument("--label", help="sampling: class name or index")
    p.add_argument("--n", type=int, help="sampling: number of images")
    p.add_argument("--seed", type=int, default=0, help="sampling: image i uses seed SEED + i (default: 0)")
    p.add_argument(
        "--truncation",
        type=float,
        default=1.0,
        help="sampling, style-based models: psi in [0, 1] (1: none, 0: the class's average image; default: 1)",
    )
    p.add_argument(
        "--mix-seed",
        type=int,
        default=None,
        help="sampling, style-based models: image i takes the styles of seed MIX_SEED + i from --mix-layer on",
    )
    p.add_argument(
        "--mix-layer",
        type=int,
        default=None,
        help="sampling, style-based models: the layer --mix-seed takes over",
    )
    p.add_argument(
        "--shard-index", type=int, default=None, help="this shard (default: $JOB_COMPLETION_INDEX or 0)"
    )
    p.add_argument(
        "--shard-count",
        type=int,
        default=None,
        help="number of shards (default: $TRANSFIGURE_SHARD_COUNT or 1)",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="zoo folder (default: $TRANSFIGURE_MODELS_DIR or models/)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="translate: downscale so the longer side is at most this first; 0 keeps the size "
        "(default: $TRANSFIGURE_MAX_SIDE, else 0: images are translated at their own resolution, as the service does)",
    )
    p.add_argument(
        "--fullres-max-side",
        type=int,
        default=None,
        help="translate with a full-resolution network (card input.multiple_of > 1): run it on a copy "
        "whose longer side is at most this and resize its output back to the image's size; 0 = off "
        "(default: $TRANSFIGURE_FULLRES_MAX_SIDE, else 1024, as the service does)",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=BATCH_MAX_BYTES,
        help=f"largest input file (default: {BATCH_MAX_BYTES})",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        help="upscale: tile side in input pixels (default: $TRANSFIGURE_TILE or 256)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="images of one size per inference (default: 4)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime threads (default: $TRANSFIGURE_THREADS or all available CPUs)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit 0 even if some inputs failed (they stay in the report)",
    )
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help=f"report file (default: OUTPUT/{STATE_DIR}/report-<i>-of-<n>.jsonl)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar with images/s and ETA (default: when stderr is a terminal)",
    )


def _shard(args: argparse.Namespace, settings: Settings) -> tuple[int, int]:
    env_index = settings.job_completion_index
    index = args.shard_index if args.shard_index is not None else (env_index or 0)
    count = args.shard_count if args.shard_count is not None else settings.shard_count
    if count < 1:
        raise UsageError(f"--shard-count must be at least 1, got {count}")
    if not 0 <= index < count:
        hint = " (set --shard-count to the Job's completions)" if env_index is not None else ""
        raise UsageError(f"--shard-index {index} is outside 0..{count - 1}{hint}")
    return index, count


def _open_model(args: argparse.Namespace, settings: Settings, task: str | None, threads: int) -> LoadedModel:
    root = args.models_dir or settings.models_dir
    providers = plan_from_settings(settings)  # TRANSFIGURE_PROVIDERS: CUDA or CPU, as the service
    zoo = Zoo.load(root, names=[args.model], strict=False, threads=threads, workers=1, providers=providers)
    if args.model not in zoo:
        folders = [p.parent.name for p in card_paths(root)]
        if args.model in folders and args.model in zoo.unavailable:
            raise UsageError(zoo.unavailable[args.model])  # the card or file is bad: say which and why
        raise UsageError(
            f"unknown model '{args.model}' in {root}: available: {', '.join(folders) or '(none)'}"
        )
    return zoo.get(args.model, task)


def _options(
    args: argparse.Namespace, settings: Settings, model: LoadedModel, task: str, threads: int
) -> Options:
    env = settings.limits
    limits = replace(env, max_bytes=max(1, args.max_bytes))
    max_side = env.max_side if args.max_side is None else (args.max_side or None)
    fullres = env.fullres_max_side if args.fullres_max_side is None else (args.fullres_max_side or None)
    if (args.max_side or 0) < 0 or (args.fullres_max_side or 0) < 0:
        raise UsageError("--max-side and --fullres-max-side take a number of pixels, or 0 for off")
    label = 0
    if task == "sample":
        if args.label is None:
            raise UsageError(f"sampling needs --label: one of {model.card.classes}")
        try:
            label = model.card.class_index(args.label)
        except ValueError as e:
            raise UsageError(str(e)) from None
    truncation = getattr(args, "truncation", 1.0)
    mix_seed, mix_layer = getattr(args, "mix_seed", None), getattr(args, "mix_layer", None)
    if (mix_seed is None) != (mix_layer is None):
        raise UsageError("style mixing needs both --mix-seed and --mix-layer")
    mix = sampling.Mix(mix_seed, mix_layer) if mix_seed is not None and mix_layer is not None else None
    if task == "sample":
        try:
            # batch sampling has no interpolation, so max_samples does not apply
            sampling.check_controls(model.card, sampling.Controls(truncation, mix), max_samples=1)
            if mix is not None:  # the last image mixes with seed --mix-seed + n - 1: in range too
                last = sampling.Controls(mix=replace(mix, seed=mix.seed + (args.n or 1) - 1))
                sampling.check_controls(model.card, last, max_samples=1)
        except sampling.ControlError as e:
            raise UsageError(str(e)) from None
    elif truncation != 1.0 or mix is not None:
        raise UsageError("--truncation, --mix-seed and --mix-layer are sampling options")
    return Options(
        task=task,
        fmt=normalize_format(args.format),
        quality=args.quality,
        limits=limits,
        max_side=max_side,
        fullres_max_side=fullres,
        tile=env.tile if args.tile is None else max(0, args.tile),
        overlap=env.tile_overlap,
        label=label,
        truncation=truncation,
        mix=mix,
        batch_size=max(1, args.batch_size),
        io_threads=max(2, min(4, threads)),
        overwrite=args.overwrite,
    )


class _NoProgress:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar (images/s and ETA), or nothing when progress is off (the summary line still prints)."""
    if not enabled:
        return _NoProgress()
    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, smoothing=0.1)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UsageError, SettingsError, ModelNotFound, WrongTask, CardError, ImageError) as e:
        print(f"transfigure batch: {e}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    settings = load_settings()  # the environment, read once per run
    index, count = _shard(args, settings)
    sampling = args.task == "sample" or args.label is not None or args.n is not None
    if sampling and args.input:
        raise UsageError("give either --input (translate / upscale) or --label and --n (sample), not both")
    if not sampling and not args.input:
        raise UsageError("--input is required (or --label and --n to sample)")
    threads = args.threads or settings.threads or cpu_count()
    model = _open_model(args, settings, "sample" if sampling else args.task, threads)
    task = model.card.task
    if task == "sample" and not sampling:
        raise UsageError(f"model '{model.name}' samples images: use --label CLASS --n N instead of --input")
    opts = _options(args, settings, model, task, threads)
    output_dir: Path = args.output
    output_dir.mkdir(parents=True, exist_ok=True)

    if task == "sample":
        if not args.n or args.n < 1:
            raise UsageError("sampling needs --n N (at least 1)")
        assert model.card.classes is not None
        items = plan_samples(model.card.classes[opts.label], args.n, args.seed, output_dir, opts.fmt)
        mine = select_shard(items, index, count, by_position=True)
    else:
        entries = find_inputs(args.input, output_dir)
        if not entries:
            raise UsageError(f"--input {args.input}: no images found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        items = plan_files(entries, output_dir, opts.fmt)
        mine = select_shard(items, index, count)

    tag = f"{index:04d}-of-{count:04d}"
    report = Report(args.report or output_dir / STATE_DIR / f"report-{tag}.jsonl")
    runner = ShardRunner(model, opts, output_dir, report)
    stop_on_term = _graceful_sigterm(runner.stop)
    start = time.perf_counter()
    counts: dict[str, int] = defaultdict(int)
    try:
        work, done = runner.todo(mine)
        for o in done:
            counts[o.status] += 1
        show = sys.stderr.isatty() if args.progress is None else args.progress
        bar = _progress(len(work), show, f"{model.name} shard {index}/{count}")
        try:

            def on_done(o: Outcome) -> None:
                counts[o.status] += 1
                bar.update(1)
                if o.status == "failed":
                    bar.set_postfix(failed=counts["failed"], refresh=False)

            runner.run(work, on_done)
        finally:
            bar.close()
    finally:
        report.close()
        stop_on_term()
    elapsed = time.perf_counter() - start
    made = counts["ok"]
    summary = {
        "model": model.name,
        "task": task,
        "shard_index": index,
        "shard_count": count,
        "total_inputs": len(items),
        "shard_inputs": len(mine),
        "ok": made,
        "skipped": counts["skipped"],
        "failed": counts["failed"],
        "not_done": len(mine) - sum(counts.values()),
        "seconds": round(elapsed, 3),
        "images_per_s": round(made / elapsed, 3) if elapsed > 0 else None,
        "threads": threads,
        "report": str(report.path),
        "interrupted": runner.stop.is_set(),
    }
    atomic_write(
        report.path.with_name(f"summary-{tag}.json"), (json.dumps(summary, indent=2) + "\n").encode()
    )
    print(
        f"transfigure batch: shard {index}/{count}: {made} made, {counts['skipped']} already done, "
        f"{counts['failed']} failed of {len(mine)} ({summary['images_per_s']} img/s); report: {report.path}",
        file=sys.stderr,
    )
    if runner.stop.is_set():
        return EXIT_TERMINATED
    if counts["failed"] and not args.allow_failures:
        return EXIT_FAILED
    return EXIT_OK


def _graceful_sigterm(stop: threading.Event) -> Callable[[], None]:
    """On SIGTERM (pod eviction), finish the images in flight, write the summary, exit 143.

    Returns a function that restores the previous handler. Outside the main thread (tests) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m service.batch`` = ``transfigure batch`` (the Bento image has no console script)."""
    parser = argparse.ArgumentParser(prog="transfigure batch", description=__doc__.strip().splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
