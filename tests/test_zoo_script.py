"""The zoo script: its commands are well formed and its quality-bar verdicts follow the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import export, zoo


def _eval_json(tmp_path: Path, metrics: dict[str, float], net: str = "G") -> Path:
    path = tmp_path / "eval.json"
    rows = [{"name": k, "value": v, "split": "test", "protocol": "p", "command": "c", "net": net}
            for k, v in metrics.items()]  # fmt: skip
    rows.append(
        {"name": "fid_A2B", "value": 1.0, "split": "s", "protocol": "p", "command": "c", "net": "other"}
    )
    path.write_text(json.dumps({"metrics": rows}))
    return path


def test_psnr_bar_met_and_missed(tmp_path) -> None:
    check = zoo._bar_psnr(30.5)
    met = zoo.bar_verdict(check, _eval_json(tmp_path, {"psnr_y_x4": 30.61, "psnr_y_bicubic_x4": 28.4}), "G")
    [crit] = met.criteria
    assert met.met and (crit.metric, crit.value, crit.limit) == ("psnr_y_x4", 30.61, 30.5)
    assert crit.context == {"psnr_y_bicubic_x4": 28.4}
    missed = zoo.bar_verdict(check, _eval_json(tmp_path, {"psnr_y_x4": 30.2, "psnr_y_bicubic_x4": 28.4}), "G")
    assert not missed.met and missed.criteria[0].value == 30.2
    unmeasured = zoo.bar_verdict(check, _eval_json(tmp_path, {"psnr_y_bicubic_x4": 28.4}), "G")
    assert not unmeasured.met and unmeasured.criteria[0].value is None


def test_translation_bar_needs_fid_and_judge_and_reads_only_its_net(tmp_path) -> None:
    check = zoo._bar_fid("A2B", below_identity=0.0, judge_share=0.6)
    good = {"fid_A2B": 70.0, "fid_identity_A2B": 79.0, "judge_target_share_A2B": 0.65}
    verdict = zoo.bar_verdict(check, _eval_json(tmp_path, good, "G_AB"), "G_AB")
    assert verdict.met and [c.metric for c in verdict.criteria] == ["fid_A2B", "judge_target_share_A2B"]
    low_judge = {**good, "judge_target_share_A2B": 0.4}
    verdict = zoo.bar_verdict(check, _eval_json(tmp_path, low_judge, "G_AB"), "G_AB")
    assert not verdict.met and [c.met for c in verdict.criteria] == [True, False]
    # the other net's fid_A2B (1.0) must not be read in place of this one's
    worse_fid = {**good, "fid_A2B": 85.0}
    verdict = zoo.bar_verdict(check, _eval_json(tmp_path, worse_fid, "G_AB"), "G_AB")
    assert not verdict.met and verdict.criteria[0].value == 85.0
    ratio = zoo._bar_fid("x", max_identity_ratio=1.10, judge_share=0.65)
    ok = ratio({"fid_x": 86.0, "fid_identity_x": 79.0, "judge_target_share_x": 0.7})
    assert ok.met and ok.criteria[0].limit == pytest.approx(86.9)
    assert ok.criteria[0].context == {"fid_identity_x": 79.0}
    assert not ratio({"fid_x": 87.0, "fid_identity_x": 79.0, "judge_target_share_x": 0.7}).met  # 1.101 x
    assert not ratio({"fid_x": 80.0, "fid_identity_x": 79.0, "judge_target_share_x": 0.6}).met  # judge
    monet = zoo._bar_fid("x", below_identity=0.15)
    assert not monet({"fid_x": 120.0, "fid_identity_x": 135.0}).met  # 11 % below: not enough
    assert monet({"fid_x": 110.0, "fid_identity_x": 135.0}).met
    assert not monet({"fid_x": 110.0}).met  # no identity baseline: no limit to meet


def test_cgan_bar_is_per_class(tmp_path) -> None:
    m = {"judge_accuracy_samples_cat": 0.95, "judge_accuracy_real_cat": 0.97,
         "judge_accuracy_samples_dog": 0.80, "judge_accuracy_real_dog": 0.96}  # fmt: skip
    bar = zoo._bar_judge_per_class(m)
    assert not bar.met and "dog" in bar.criteria[0].metric
    assert bar.criteria[0].value == pytest.approx(0.80 / 0.96)
    m["judge_accuracy_samples_dog"] = 0.90
    assert zoo._bar_judge_per_class(m).met
    m.update(
        diversity_samples_cat=2.0, diversity_real_cat=4.0, diversity_samples_dog=3.0, diversity_real_dog=3.0
    )
    context = zoo._bar_judge_per_class(m).criteria[0].context  # reported, not part of the bar
    assert context["diversity_samples_vs_real_min"] == 0.5 and context["diversity_samples_vs_real_max"] == 1.0
    assert not zoo._bar_judge_per_class({}).met


def test_export_args_carry_the_verdict_only_when_the_evaluation_exists(tmp_path) -> None:
    jobs = {j.name: j for j in zoo.jobs(tmp_path / "data", tmp_path / "runs")}
    assert set(jobs) == {"quickdraw_cgan", "sr_x4", "sr_x4_gan", "summer2winter", "winter2summer",
                         "photo2monet", "facades_label2photo"}  # fmt: skip
    job = jobs["sr_x4"]
    assert "--quality-bar" not in job.export_args()
    eval_path = Path(job.export[job.export.index("--eval") + 1])
    eval_path.parent.mkdir(parents=True)
    eval_path.write_text(json.dumps({"metrics": [
        {"name": "psnr_y_x4", "value": 31.0, "split": "Set5", "protocol": "p", "command": "c", "net": "G"}]}))  # fmt: skip
    args = job.export_args()
    assert args[-2] == "--quality-bar" and "--notes" not in args
    verdict = export.quality_bar_from_json(args[-1])  # what `transfigure export` reads
    assert verdict.met and verdict.criteria[0].value == 31.0


def test_dry_run_prints_every_command(capsys, tmp_path) -> None:
    assert zoo.main(["--dry-run", "--runs", str(tmp_path), "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("$ transfigure train") == 7  # classifier, cgan, sr psnr, sr gan, 2 cyclegan, pix2pix
    # the translators are exported, evaluated as shipped, then exported again with their metrics
    assert out.count("$ transfigure export") == 10
    s2w = out[out.index("== summer2winter") : out.index("== winter2summer")]
    steps = [line.split()[2] for line in s2w.splitlines() if line.startswith("$ transfigure")]
    assert steps == ["train", "export", "export", "evaluate", "export"]
    assert "--eval" not in s2w.splitlines()[2] and "--eval" in s2w.splitlines()[-1]


def test_sr_comparison_grid_runs_both_exported_models(tmp_path) -> None:
    from PIL import Image

    from tests.tiny_models import make_model

    fixtures = Path(__file__).parent / "fixtures" / "sr"
    assert zoo.write_sr_comparison(tmp_path, fixtures, names=("a", "b")) is None  # models missing
    for name in ("a", "b"):
        make_model(tmp_path, "upscale", name=name)
    out = zoo.write_sr_comparison(tmp_path, fixtures, names=("a", "b"))
    assert out == tmp_path / "b" / "compare.png"
    grid = Image.open(out)
    n_images = len(list(fixtures.glob("*.png")))
    assert grid.height >= n_images * 16 and grid.width > grid.height / n_images * 3  # 4 crops a row
    assert out.stat().st_size <= 300_000


def test_before_after_figure_shows_each_photo_at_its_own_size_and_the_model_output(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from tests.tiny_models import make_model

    make_model(tmp_path, "translate", name="t")  # inverts the image
    photos = sorted((Path(__file__).parent / "fixtures" / "yosemite" / "testA").iterdir())[:2]
    out = zoo.write_before_after(tmp_path / "t", photos, tmp_path / "docs" / "t.jpg")
    fig = np.asarray(Image.open(out).convert("RGB"), dtype=np.float64)
    first = np.asarray(Image.open(photos[0]).convert("RGB"), dtype=np.float64)
    h, w = first.shape[:2]
    assert fig.shape[0] == 2 * h + 2 and fig.shape[1] >= 2 * w  # before row, after row, native size
    assert np.abs(fig[:h, :w] - first).mean() < 6  # JPEG of the photo itself
    assert np.abs(fig[h + 2 :, :w] - (255 - first)).mean() < 6  # the model's output: the inversion
