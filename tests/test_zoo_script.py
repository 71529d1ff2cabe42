"""The zoo script: its commands are valid for their recipes and commands, run in dependency order, and its
quality-bar verdicts follow the numbers."""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
from pathlib import Path

import pytest

from models import zoo_dir
from training import zoo
from training.cli import COMMANDS
from training.config import ConfigError
from training.model_folder import quality_bar_from_json
from training.recipes import recipe_module


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
    check = zoo.bar_psnr(30.5)
    met = zoo.bar_verdict(check, _eval_json(tmp_path, {"psnr_y_x4": 30.61, "psnr_y_bicubic_x4": 28.4}), "G")
    [crit] = met.criteria
    assert met.met and (crit.metric, crit.value, crit.limit) == ("psnr_y_x4", 30.61, 30.5)
    assert crit.context == {"psnr_y_bicubic_x4": 28.4}
    missed = zoo.bar_verdict(check, _eval_json(tmp_path, {"psnr_y_x4": 30.2, "psnr_y_bicubic_x4": 28.4}), "G")
    assert not missed.met and missed.criteria[0].value == 30.2
    unmeasured = zoo.bar_verdict(check, _eval_json(tmp_path, {"psnr_y_bicubic_x4": 28.4}), "G")
    assert not unmeasured.met and unmeasured.criteria[0].value is None


def test_translation_bar_needs_fid_and_judge_and_reads_only_its_net(tmp_path) -> None:
    check = zoo.bar_fid("A2B", below_identity=0.0, judge_share=0.6)
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
    ratio = zoo.bar_fid("x", max_identity_ratio=1.10, judge_share=0.65)
    ok = ratio({"fid_x": 86.0, "fid_identity_x": 79.0, "judge_target_share_x": 0.7})
    assert ok.met and ok.criteria[0].limit == pytest.approx(86.9)
    assert ok.criteria[0].context == {"fid_identity_x": 79.0}
    assert not ratio({"fid_x": 87.0, "fid_identity_x": 79.0, "judge_target_share_x": 0.7}).met  # 1.101 x
    assert not ratio({"fid_x": 80.0, "fid_identity_x": 79.0, "judge_target_share_x": 0.6}).met  # judge
    monet = zoo.bar_fid("x", below_identity=0.15)
    assert not monet({"fid_x": 120.0, "fid_identity_x": 135.0}).met  # 11 % below: not enough
    assert monet({"fid_x": 110.0, "fid_identity_x": 135.0}).met
    assert not monet({"fid_x": 110.0}).met  # no identity baseline: no limit to meet
    # the independent judge is a criterion of its own: both judges must agree
    both = zoo.bar_fid("x", max_identity_ratio=1.05, judge_share=0.6, cnn_judge_share=0.6)
    m = {"fid_x": 80.0, "fid_identity_x": 79.0, "judge_target_share_x": 0.7, "cnn_judge_target_share_x": 0.65,
         "cnn_judge_target_share_identity_x": 0.1}  # fmt: skip
    assert both(m).met and both(m).criteria[-1].context["cnn_judge_target_share_identity_x"] == 0.1
    assert not both({**m, "cnn_judge_target_share_x": 0.3}).met  # fools the Inception judge only
    assert not both({k: v for k, v in m.items() if not k.startswith("cnn")}).met  # not measured


def test_cgan_bar_is_per_class(tmp_path) -> None:
    m = {"judge_accuracy_samples_cat": 0.95, "judge_accuracy_real_cat": 0.97,
         "judge_accuracy_samples_dog": 0.80, "judge_accuracy_real_dog": 0.96}  # fmt: skip
    bar = zoo.bar_judge_per_class(m)
    assert not bar.met and "dog" in bar.criteria[0].metric
    assert bar.criteria[0].value == pytest.approx(0.80 / 0.96)
    m["judge_accuracy_samples_dog"] = 0.90
    assert zoo.bar_judge_per_class(m).met
    m.update(
        diversity_samples_cat=2.0, diversity_real_cat=4.0, diversity_samples_dog=3.0, diversity_real_dog=3.0
    )
    context = zoo.bar_judge_per_class(m).criteria[0].context  # reported, not part of the bar
    assert context["diversity_samples_vs_real_min"] == 0.5 and context["diversity_samples_vs_real_max"] == 1.0
    assert not zoo.bar_judge_per_class({}).met


def test_export_args_carry_the_verdict_only_when_the_evaluation_exists(tmp_path) -> None:
    job = next(
        j for j in zoo.jobs(tmp_path / "data", tmp_path / "runs") if j.bar is not None and j.export.eval
    )
    assert "--quality-bar" not in job.export_args()
    job.export.eval.parent.mkdir(parents=True)
    job.export.eval.write_text(json.dumps({"metrics": []}))
    args = job.export_args()
    assert args[-2] == "--quality-bar" and "--notes" not in args
    verdict = quality_bar_from_json(args[-1])  # what `transfigure export` reads
    assert not verdict.met and all(c.value is None for c in verdict.criteria)  # nothing was measured
    assert "--quality-bar" not in job.export_args(with_eval=False) and "--eval" not in job.export_args(
        with_eval=False
    )


def _parse(argv: list[str]) -> argparse.Namespace:
    """``argv`` (``train RECIPE ...``, ``evaluate ...`` or ``export ...``) parsed as transfigure parses it."""
    if argv[0] == "train":
        module, rest = recipe_module(argv[1]), argv[2:]
    else:
        module, rest = importlib.import_module(COMMANDS[argv[0]][0]), argv[1:]
    parser = argparse.ArgumentParser(exit_on_error=False)
    module.add_arguments(parser)
    return parser.parse_args(rest)


def test_every_zoo_command_is_valid_for_its_recipe_and_command(tmp_path) -> None:
    """Each training run is a valid Config of its recipe (checked without training), and each
    evaluate/export command parses; exports and evaluations read runs that the job or a job it
    needs trains."""
    all_jobs = {j.name: j for j in zoo.jobs(tmp_path / "data", tmp_path / "runs")}
    for job in all_jobs.values():
        for run in job.train:
            config = run.check()
            assert type(config) is recipe_module(run.recipe).Config and config.out == str(run.out)
        trained = {r.out for name in [job.name, *job.needs] for r in all_jobs[name].train}
        export = _parse(job.export_args())
        assert Path(export.run) in trained and export.name == job.name
        if job.evaluate is not None:
            paths = [Path(p) for p in _parse(job.evaluate.argv()).run]
            # a job evaluates its runs, or (evaluate_exported) the model folders it exports
            assert all(p in trained or (job.evaluate_exported and p.parent == zoo_dir()) for p in paths)
        assert all(n in all_jobs for n in job.needs)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"ngf_width": 32}, "no field 'ngf_width'"),  # unknown field
        ({"ngf": "32"}, "--ngf: expected"),  # wrong type (the command line would turn it into 32)
        ({"ngf": 32.5}, "--ngf: expected"),
        ({"detail": 1}, "--detail: expected"),
        ({"norm": "group"}, "unknown norm 'group'"),  # invalid choice
        ({"gan_loss": "least-squares"}, "unknown gan loss"),
        ({"gan_loss": "non-saturating"}, "asked for 'non-saturating'"),  # an alias: the config says vanilla
        ({"generator": "guided", "low_size": 30}, "low-size"),  # the recipe's own validation
    ],
)
def test_the_zoo_check_refuses_what_training_would(tmp_path, config, error) -> None:
    run = zoo.TrainRun("cyclegan", tmp_path / "run", config)
    with pytest.raises(ConfigError, match=error):
        run.check()
    assert not (tmp_path / "run").exists()  # checked, not trained


def test_dry_run_prints_each_jobs_commands_after_the_jobs_it_needs(capsys, tmp_path) -> None:
    assert zoo.main(["--dry-run", "--runs", str(tmp_path), "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    sections = {}
    for block in out.split("== ")[1:]:
        name, *lines = block.strip().splitlines()
        sections[name] = [shlex.split(line.removeprefix("$ transfigure ")) for line in lines]
    all_jobs = {j.name: j for j in zoo.jobs(tmp_path, tmp_path)}
    assert list(sections) == [name for name in all_jobs if name in sections] and set(sections) == set(
        all_jobs
    )
    order = list(sections)
    for name, commands in sections.items():
        job = all_jobs[name]
        assert all(order.index(dep) < order.index(name) for dep in job.needs)
        assert [c for c in commands if c[0] == "train"] == [r.argv() for r in job.train]
        for argv in commands:
            _parse(argv)  # every printed command is one transfigure accepts
        exports = [c for c in commands if c[0] == "export"]
        assert exports[-1] == job.export_args()  # the last export carries the evaluation
        if job.evaluate_exported:
            # export without the metrics (this model and those exported from the same run), evaluate
            # the exported folders, then export again with the metrics
            steps = [c[0] for c in commands if c[0] != "train"]
            assert steps[-2:] == ["evaluate", "export"] and set(steps[:-2]) == {"export"}
            assert all("--eval" not in c for c in exports[:-1])
            dependents = {n for n, j in all_jobs.items() if name in j.needs}
            assert {_parse(c).name for c in exports[:-1]} == {name, *dependents}


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


def test_each_export_reads_the_report_its_evaluation_writes(tmp_path) -> None:
    """A job that evaluates its exported model folder into a report exports the card from exactly
    that report (the name ``transfigure evaluate`` gives it: prefixed by the folder only when one
    command evaluates several folders)."""
    checked = 0
    for job in zoo.jobs(tmp_path / "data", tmp_path / "runs"):
        folder = zoo_dir() / job.name
        if job.evaluate is None or job.export.eval is None or folder not in job.evaluate.paths:
            continue
        assert job.export.eval == job.evaluate.report(folder), job.name
        checked += 1
    assert checked >= 3  # the translators at least
    several = zoo.Evaluate((Path("m/a"), Path("m/b")), data=Path("d/set"), out=Path("o"))
    assert several.report(Path("m/b")) == Path("o/b_set.json")
    with pytest.raises(ValueError, match="not evaluated"):
        several.report(Path("m/c"))
