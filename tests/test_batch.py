"""service/batch.py: sharding, resume after SIGKILL, atomic outputs, bad inputs, path escapes, sampling."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service import batch
from service.imaging import Limits, decode_image, sample_images, translate_image, translate_images
from service.zoo import Zoo
from tests.tiny_models import make_model, make_zoo

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def zoo(zoo_dir: Path) -> Zoo:
    return Zoo.load(zoo_dir, threads=1)


def write_image(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode).save(path)
    return path


def make_tree(root: Path, n: int = 9) -> list[str]:
    """n images in nested folders with a few sizes (so same-size batching has groups to form)."""
    rels = []
    sizes = [(32, 32), (40, 24), (36, 44)]
    for i in range(n):
        rel = f"{'ab'[i % 2]}/{'xy'[i % 3 % 2]}/img{i:02d}.{'png' if i % 4 else 'jpg'}"
        write_image(root / rel, sizes[i % 3], seed=i)
        rels.append(rel)
    return sorted(rels)


def run_batch(zoo_dir: Path, *args: object) -> int:
    return batch.main(["--models-dir", str(zoo_dir), "--no-progress", *map(str, args)])


def outputs(folder: Path) -> list[str]:
    """Every file under ``folder`` except our state folder, as sorted relative paths."""
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and rel.parts[0] != batch.STATE_DIR:
            found.append(rel.as_posix())
    return sorted(found)


def reports(folder: Path) -> list[dict]:
    records = []
    for path in sorted((folder / batch.STATE_DIR).glob("report-*.jsonl")):
        records += batch.read_report(path)
    return records


def expected_translation(model, src: Path) -> np.ndarray:
    """What the HTTP path (decode -> translate_image) makes of ``src``."""
    img = decode_image(src.read_bytes(), Limits())
    return translate_image(model, img).rgb


# -- sharding --------------------------------------------------------------------------------------


def test_shards_cover_every_input_exactly_once(tmp_path: Path, zoo_dir: Path, zoo: Zoo) -> None:
    rels = make_tree(tmp_path / "in", n=11)
    out = tmp_path / "out"
    for i in range(3):
        assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", tmp_path / "in", "--output", out,
                         "--shard-index", i, "--shard-count", 3) == 0  # fmt: skip
    want = sorted(str(Path(r).with_suffix(".png").as_posix()) for r in rels)
    assert outputs(out) == want
    recs = reports(out)
    assert sorted(r["input"] for r in recs) == rels  # each input in exactly one shard's report, once
    assert {r["status"] for r in recs} == {"ok"}
    per_shard = [
        len(batch.read_report(out / batch.STATE_DIR / f"report-{i:04d}-of-0003.jsonl")) for i in range(3)
    ]
    assert sum(per_shard) == len(rels) and all(per_shard)  # hashing spread 11 inputs over all 3 shards
    model = zoo.get("tiny-translate")
    for rel in rels:  # the batch output is what the service would answer (one processing path)
        got = np.asarray(Image.open(out / Path(rel).with_suffix(".png")).convert("RGB"))
        np.testing.assert_array_equal(got, expected_translation(model, tmp_path / "in" / rel))


def test_shard_assignment_is_a_partition_and_stable() -> None:
    items = [batch.Item(key=f"d/{i}.png", output=Path(f"/o/{i}.png")) for i in range(200)]
    parts = [batch.select_shard(items, i, 4) for i in range(4)]
    keys = [it.key for p in parts for it in p]
    assert sorted(keys) == sorted(it.key for it in items)
    assert all(20 < len(p) < 80 for p in parts)  # roughly balanced
    # an input keeps its shard when other inputs come and go
    fewer = items[::3]
    for i in range(4):
        assert {it.key for it in batch.select_shard(fewer, i, 4)} <= {it.key for it in parts[i]}


def test_shard_index_defaults_to_job_completion_index(
    tmp_path: Path, zoo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "in", n=6)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("TRANSFIGURE_SHARD_COUNT", "2")
    out = tmp_path / "out"
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", tmp_path / "in", "--output", out) == 0
    assert [p.name for p in (out / batch.STATE_DIR).glob("report-*")] == ["report-0001-of-0002.jsonl"]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")  # index outside the count is a usage error
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", tmp_path / "in", "--output", out) == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRANSFIGURE_FULLRES_MAX_SIDE", "big"),
        ("TRANSFIGURE_SHARD_COUNT", "two"),
        ("JOB_COMPLETION_INDEX", "x"),
    ],
)
def test_a_bad_environment_variable_is_a_usage_error(
    tmp_path: Path,
    zoo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    name: str,
    value: str,
) -> None:
    make_tree(tmp_path / "in", n=1)
    monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", tmp_path / "in", "--output", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("transfigure batch: ") and f"{name}={value!r}" in err and "Traceback" not in err
    assert not out.exists()  # refused before any work


# -- resume and atomicity ----------------------------------------------------------------------------


def test_sigkill_mid_run_then_resume_completes_without_damage(
    tmp_path: Path, zoo_dir: Path, zoo: Zoo
) -> None:
    """Kill the real CLI after the report shows k outputs, restart it, and check the result."""
    src = tmp_path / "in"
    n, blocked = 30, 12
    for i in range(n):
        if i != blocked:
            write_image(src / f"{i:03d}.png", (32, 32), seed=i)
    # A FIFO named like an image stalls the run deterministically when it reaches it (reading it
    # blocks until a writer appears): the run is certainly mid-way when it is killed.
    os.mkfifo(src / f"{blocked:03d}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "training.cli", "batch", "--model", "tiny-translate", "--input", str(src),
           "--output", str(out), "--models-dir", str(zoo_dir), "--batch-size", "1", "--threads", "1",
           "--no-progress"]  # fmt: skip
    report = out / batch.STATE_DIR / "report-0000-of-0001.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while len(batch.read_report(report)) < blocked and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.02)
        done_before_kill = len(batch.read_report(report))
        assert done_before_kill >= blocked
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr:
            proc.stderr.close()
    partial = outputs(out)
    assert len(partial) < n  # it really was killed mid-way
    for rel in partial:  # whatever exists is whole
        Image.open(out / rel).load()

    # the input becomes readable, and a crash mid-write left a stale temporary file behind
    (src / f"{blocked:03d}.png").unlink()
    write_image(src / f"{blocked:03d}.png", (32, 32), seed=blocked)
    stale = batch.part_path(out / f"{n - 1:03d}.png")
    stale.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    mtimes = {rel: (out / rel).stat().st_mtime_ns for rel in partial}

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert outputs(out) == [f"{i:03d}.png" for i in range(n)]  # all there, no .part, nothing twice
    model = zoo.get("tiny-translate")
    for i in range(n):
        got = np.asarray(Image.open(out / f"{i:03d}.png").convert("RGB"))
        np.testing.assert_array_equal(got, expected_translation(model, src / f"{i:03d}.png"))
    for rel, mtime in mtimes.items():  # complete outputs were skipped, not redone
        assert (out / rel).stat().st_mtime_ns == mtime
    second = batch.read_report(report)[done_before_kill:]
    assert sum(r["status"] == "skipped" for r in second) == len(partial)
    assert sum(r["status"] == "ok" for r in second) == n - len(partial)


def test_sigterm_stops_cleanly_with_a_summary(tmp_path: Path, zoo_dir: Path) -> None:
    """A pod eviction (SIGTERM) finishes what is in flight, writes the summary and exits 143."""
    src = tmp_path / "in"
    n, blocked = 24, 4
    for i in range(n):
        if i != blocked:
            write_image(src / f"{i:03d}.png", (32, 32), seed=i)
    fifo = src / f"{blocked:03d}.png"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "service.batch", "--model", "tiny-translate", "--input", str(src),
           "--output", str(out), "--models-dir", str(zoo_dir), "--batch-size", "1", "--no-progress"]  # fmt: skip
    report = out / batch.STATE_DIR / "report-0000-of-0001.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(batch.read_report(report)) < blocked and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        # unblock the reader with junk: that input fails, the run stops. Non-blocking, so that a
        # run that already died makes this fail (ENXIO: no reader) instead of hanging the test.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"junk")
        os.close(fd)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == batch.EXIT_TERMINATED, err
    summary = json.loads((out / batch.STATE_DIR / "summary-0000-of-0001.json").read_text())
    assert summary["interrupted"] is True and summary["not_done"] > 0
    assert summary["ok"] + summary["failed"] + summary["skipped"] + summary["not_done"] == n
    assert len(outputs(out)) == summary["ok"]  # everything reported ok is on disk, nothing else


def test_report_survives_a_line_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"input": "a", "status": "ok"}\n{"input": "b", "sta')  # killed mid-line
    assert [r["input"] for r in batch.read_report(path)] == ["a"]
    rep = batch.Report(path)
    rep.write({"input": "c", "status": "ok"})
    rep.close()
    assert [r["input"] for r in batch.read_report(path)] == ["a", "c"]


# -- bad inputs ----------------------------------------------------------------------------------------


def test_bad_images_are_reported_and_the_run_goes_on(tmp_path: Path, zoo_dir: Path) -> None:
    src = tmp_path / "in"
    make_tree(src, n=4)
    (src / "not_an_image.png").write_bytes(b"hello")
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), "red").save(buf, "PNG")
    (src / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (src / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src, "--output", out) == 1
    recs = {r["input"]: r for r in reports(out)}
    bad = {"not_an_image.png", "truncated.png", "empty.jpg"}
    assert {k for k, r in recs.items() if r["status"] == "failed"} == bad
    assert all(recs[k]["error"] for k in bad)
    assert "/" not in recs["not_an_image.png"]["error"]  # the user-facing message, no paths or traces
    assert len(outputs(out)) == 4  # the good ones were made
    summary = json.loads(next((out / batch.STATE_DIR).glob("summary-*.json")).read_text())
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (4, 3, 0)


def test_allow_failures_and_summary(tmp_path: Path, zoo_dir: Path) -> None:
    src = tmp_path / "in"
    make_tree(src, n=3)
    (src / "bad.png").write_bytes(b"junk")
    out = tmp_path / "out"
    assert (
        run_batch(zoo_dir, "--model", "tiny-translate", "--input", src, "--output", out, "--allow-failures")
        == 0
    )
    summary = json.loads((out / batch.STATE_DIR / "summary-0000-of-0001.json").read_text())
    assert (summary["ok"], summary["failed"], summary["skipped"], summary["not_done"]) == (3, 1, 0, 0)
    # run again: good outputs are skipped, the bad input is tried (and fails) again
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src, "--output", out) == 1
    summary = json.loads((out / batch.STATE_DIR / "summary-0000-of-0001.json").read_text())
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (0, 1, 3)


# -- paths -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["../outside.png", "a/../../x.png", "/etc/passwd", "C:/x.png", "  "])
def test_safe_relpath_refuses_escapes(line: str) -> None:
    with pytest.raises(ValueError):
        batch.safe_relpath(line)


def test_manifest_with_escape_is_refused_before_any_work(tmp_path: Path, zoo_dir: Path) -> None:
    src = tmp_path / "in"
    make_tree(src, n=2)
    manifest = src / "list.txt"
    manifest.write_text("a/x/img00.png\n# a comment\n\n../../secret.png\n/etc/hosts\n")
    out = tmp_path / "out"
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", manifest, "--output", out) == 2
    assert outputs(out) == []
    jsonl = src / "list.jsonl"
    jsonl.write_text(json.dumps({"input": "a/x/img00.png", "output": "../../escaped.png"}) + "\n")
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", jsonl, "--output", out) == 2
    assert not (tmp_path / "escaped.png").exists() and outputs(out) == []


def test_manifests_text_and_jsonl(tmp_path: Path, zoo_dir: Path) -> None:
    src = tmp_path / "in"
    rels = make_tree(src, n=4)
    (src / "list.txt").write_text("\n".join(rels[:2]) + "\n")
    out = tmp_path / "out"
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src / "list.txt", "--output", out) == 0
    assert outputs(out) == sorted(str(Path(r).with_suffix(".png").as_posix()) for r in rels[:2])
    lines = [json.dumps({"input": rels[2], "output": "named/first.webp"}), json.dumps({"input": rels[3]})]
    (src / "list.jsonl").write_text("\n".join(lines) + "\n")
    out2 = tmp_path / "out2"
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src / "list.jsonl", "--output", out2,
                     "--format", "webp") == 0  # fmt: skip
    assert outputs(out2) == sorted(["named/first.webp", str(Path(rels[3]).with_suffix(".webp").as_posix())])
    assert Image.open(out2 / "named/first.webp").format == "WEBP"


def test_symlinked_output_folder_cannot_escape(tmp_path: Path, zoo_dir: Path) -> None:
    src = tmp_path / "in"
    write_image(src / "sub" / "a.png", (32, 32), seed=1)
    write_image(src / "b.png", (32, 32), seed=2)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src, "--output", out) == 1
    assert list(elsewhere.iterdir()) == []
    recs = {r["input"]: r for r in reports(out)}
    assert recs["sub/a.png"]["status"] == "failed" and "outside" in recs["sub/a.png"]["error"]
    assert recs["b.png"]["status"] == "ok"


def test_glob_input_and_name_collisions(tmp_path: Path, zoo_dir: Path) -> None:
    src = tmp_path / "in"
    write_image(src / "d" / "same.jpg", (32, 32), seed=1)
    write_image(src / "d" / "same.png", (32, 32), seed=2)
    write_image(src / "d" / "other.png", (32, 32), seed=3)
    write_image(src / "skip.png", (32, 32), seed=4)  # not matched by the glob
    out = tmp_path / "out"
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", f"{src}/d/*", "--output", out) == 0
    assert outputs(out) == ["other.png", "same.jpg.png", "same.png.png"]


def test_output_inside_input_is_not_read_back(tmp_path: Path, zoo_dir: Path) -> None:
    src = tmp_path / "in"
    make_tree(src, n=3)
    out = src / "translated"
    for _ in range(2):
        assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src, "--output", out) == 0
    assert len(outputs(out)) == 3 and not (out / "translated").exists()


# -- tasks ---------------------------------------------------------------------------------------------


def test_batched_translation_equals_one_by_one(zoo: Zoo) -> None:
    model = zoo.get("tiny-translate")
    rng = np.random.default_rng(0)
    imgs = []
    for i in range(3):
        rgba = rng.integers(0, 256, (30, 42, 4), dtype=np.uint8)  # not a multiple of 4: padding is exercised
        buf = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buf, "PNG")
        imgs.append(decode_image(buf.getvalue(), Limits()))
        assert imgs[i].alpha is not None
    many = translate_images(model, imgs)
    for img, got in zip(imgs, many, strict=True):
        one = translate_image(model, img)
        np.testing.assert_array_equal(got.rgb, one.rgb)
        np.testing.assert_array_equal(got.alpha, img.alpha)


def test_images_are_translated_at_their_own_size_unless_max_side_says(
    tmp_path: Path, zoo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRANSFIGURE_MAX_SIDE", raising=False)
    monkeypatch.delenv("TRANSFIGURE_FULLRES_MAX_SIDE", raising=False)
    src = tmp_path / "in"
    write_image(src / "big.png", (1500, 1000), seed=3)
    inverted = 255 - np.asarray(Image.open(src / "big.png")).astype(int)
    free_zoo = tmp_path / "free_zoo"
    make_model(free_zoo, "translate", "free", multiple_of=1)  # resolution-free by its card
    out = tmp_path / "free"
    assert run_batch(free_zoo, "--model", "free", "--input", src, "--output", out) == 0
    got = np.asarray(Image.open(out / "big.png")).astype(int)
    assert got.shape == (1000, 1500, 3) and np.array_equal(got, inverted)  # the image itself
    assert "processed_size" not in reports(out)[0]
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src, "--output", tmp_path / "small",
                     "--max-side", 600) == 0  # fmt: skip
    assert Image.open(tmp_path / "small" / "big.png").size == (600, 400)
    assert "processed_size" not in reports(tmp_path / "small")[0]


def test_a_full_resolution_network_runs_bounded_and_answers_at_the_input_size(
    tmp_path: Path, zoo_dir: Path, zoo: Zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRANSFIGURE_MAX_SIDE", raising=False)
    monkeypatch.delenv("TRANSFIGURE_FULLRES_MAX_SIDE", raising=False)
    src = tmp_path / "in"
    write_image(src / "big.png", (1500, 1000), seed=3)
    write_image(src / "small.png", (300, 200), seed=4)
    model = zoo.get("tiny-translate")  # multiple_of 4: a full-resolution network
    img = decode_image((src / "big.png").read_bytes(), Limits())
    out = tmp_path / "default"
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src, "--output", out) == 0
    got = np.asarray(Image.open(out / "big.png"))
    assert got.shape == (1000, 1500, 3)  # the input's size, run at the default 1024 px
    np.testing.assert_array_equal(got, translate_images(model, [img], 1024)[0].rgb)  # the service's path
    processed = {r["input"]: r.get("processed_size") for r in reports(out)}
    assert processed == {"big.png": "1024x683", "small.png": None}
    monkeypatch.setenv("TRANSFIGURE_FULLRES_MAX_SIDE", "600")
    out = tmp_path / "env"
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src / "big.png", "--output", out) == 0
    assert Image.open(out / "big.png").size == (1500, 1000)
    assert reports(out)[0]["processed_size"] == "600x400"
    out = tmp_path / "off"  # the flag wins over the environment; 0 = off
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src / "big.png", "--output", out,
                     "--fullres-max-side", 0) == 0  # fmt: skip
    got = np.asarray(Image.open(out / "big.png")).astype(int)
    assert np.array_equal(got, 255 - img.rgb.astype(int)) and "processed_size" not in reports(out)[0]
    out = tmp_path / "lowered"  # --max-side still lowers first; the bound then has nothing to do
    assert run_batch(zoo_dir, "--model", "tiny-translate", "--input", src / "big.png", "--output", out,
                     "--max-side", 300) == 0  # fmt: skip
    assert Image.open(out / "big.png").size == (300, 200) and "processed_size" not in reports(out)[0]


def test_windows_bound_the_pixels_decoded_ahead(tmp_path: Path) -> None:
    sizes = [(100, 100), (300, 100), (50, 50), (200, 100), (10, 10)]
    items = []
    for i, size in enumerate(sizes):
        write_image(tmp_path / f"{i}.png", size, seed=i)
        items.append(batch.Item(key=f"{i}.png", output=tmp_path / f"o{i}.png", source=tmp_path / f"{i}.png"))
    (tmp_path / "5.png").write_bytes(b"not an image")  # unreadable: counted as 0, loading reports it
    items.append(batch.Item(key="5.png", output=tmp_path / "o5.png", source=tmp_path / "5.png"))
    windows = [[it.key for it in w] for w in batch._windows(items, max_items=3, max_pixels=40_000)]
    # 10k + 30k fit; 2.5k more would pass 40k; 2.5k + 20k + 0.1k; the unreadable one
    assert windows == [["0.png", "1.png"], ["2.png", "3.png", "4.png"], ["5.png"]]
    one = [[it.key for it in w] for w in batch._windows(items[:2], max_items=3, max_pixels=1)]
    assert one == [["0.png"], ["1.png"]]  # an image larger than the budget still gets a window


def test_upscale_task(tmp_path: Path, zoo_dir: Path, zoo: Zoo) -> None:
    src = tmp_path / "in"
    write_image(src / "a.png", (40, 24), seed=1)
    out = tmp_path / "out"
    assert run_batch(zoo_dir, "--model", "tiny-upscale", "--input", src, "--output", out, "--tile", 16) == 0
    scale = zoo.get("tiny-upscale").card.scale
    assert Image.open(out / "a.png").size == (40 * scale, 24 * scale)


def test_sampling_is_deterministic_across_shards_and_matches_the_service(
    tmp_path: Path, zoo_dir: Path, zoo: Zoo
) -> None:
    one, three = tmp_path / "one", tmp_path / "three"
    args = ["--model", "tiny-sample", "--label", "cat", "--n", 7, "--seed", 5]
    assert run_batch(zoo_dir, *args, "--output", one, "--batch-size", 3) == 0
    for i in range(3):
        assert run_batch(zoo_dir, *args, "--output", three, "--shard-index", i, "--shard-count", 3) == 0
    files = outputs(one)
    assert len(files) == 7 and files == outputs(three)
    for rel in files:
        assert (one / rel).read_bytes() == (three / rel).read_bytes()
    model = zoo.get("tiny-sample")
    label = model.card.class_index("cat")
    for i, rel in enumerate(files):  # image i is POST /sample n=1 seed=5+i
        want = sample_images(model, label, 1, 5 + i)[0]
        got = np.asarray(Image.open(one / rel))
        np.testing.assert_array_equal(got.reshape(want.shape), want)
    # a resume after deleting one file makes exactly that file again, byte for byte
    victim = one / files[3]
    before = victim.read_bytes()
    victim.unlink()
    assert run_batch(zoo_dir, *args, "--output", one) == 0
    assert victim.read_bytes() == before


def test_usage_errors(tmp_path: Path, zoo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run_batch(zoo_dir, "--model", "nope", "--input", tmp_path, "--output", out) == 2
    assert "available: tiny-sample, tiny-translate, tiny-upscale" in capsys.readouterr().err
    assert run_batch(zoo_dir, "--model", "tiny-sample", "--label", "dog", "--n", 2, "--output", out) == 2
    assert "apple" in capsys.readouterr().err
    assert (
        run_batch(zoo_dir, "--model", "tiny-translate", "--input", tmp_path / "missing", "--output", out) == 2
    )
    (tmp_path / "empty").mkdir()
    assert (
        run_batch(zoo_dir, "--model", "tiny-translate", "--input", tmp_path / "empty", "--output", out) == 2
    )
    assert "no images" in capsys.readouterr().err


def test_runs_without_torch(tmp_path: Path, zoo_dir: Path) -> None:
    """The batch path needs only the serve extra: running it must not import torch."""
    write_image(tmp_path / "in" / "a.png", (32, 32), seed=0)
    code = (
        "import sys; from training.cli import main\n"
        f"rc = main(['batch', '--model', 'tiny-translate', '--input', {str(tmp_path / 'in')!r}, "
        f"'--output', {str(tmp_path / 'out')!r}, '--models-dir', {str(zoo_dir)!r}, '--no-progress'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "a.png").is_file()
