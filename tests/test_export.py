"""ONNX export, parity check, INT8, MAC counting, cards and the dataset catalog — on tiny nets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models.card import (
    IMAGE_INPUT,
    LABEL_INPUT,
    OUTPUT,
    Z_INPUT,
    BarCriterion,
    CardError,
    ModelCard,
    QualityBar,
)
from training import export as ex
from training import grids, int8, int8_graph, model_folder, onnx_export
from training.data.catalog import UNKNOWN_LICENSE, provenance
from training.macs import count_macs
from training.recipes import ExportSpec

torch.set_num_threads(1)


class TinyTranslator(nn.Module):
    """Reflection pad, strided conv, transposed conv, instance norm: the ops of the real generators."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.Conv2d(8, 3, 3, padding=1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinySampler(nn.Module):
    def __init__(self, latent: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(classes, latent)
        self.fc = nn.Linear(2 * latent, 8 * 7 * 7)
        self.up = nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(label)], dim=1)).view(-1, 8, 7, 7)
        return torch.tanh(self.up(h))


TRANSLATE = ExportSpec(
    task="translate", method="cyclegan", description="tiny test translator", output_channels=3,
    input_channels=3, input_range=(-1.0, 1.0), multiple_of=4, native_size=32,
)  # fmt: skip
SAMPLE = ExportSpec(
    task="sample", method="cgan", description="tiny test sampler", output_channels=1,
    classes=["apple", "cat", "fish"], latent_dim=8, output_size=14,
)  # fmt: skip
TRAINING = {
    "dataset": "unit",
    "source": "tests",
    "license": "unknown (user data)",
    "split_sizes": {"trainA": 3, "trainB": 3},
    "recipe_config": {"size": 32},
    "steps": 2,
    "wall_time_s": 0.5,
    "hardware": "cpu",
    "commit": "unknown",
}


def _grid() -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return [[rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)] for _ in range(2)]


# -- MACs -----------------------------------------------------------------------------------------
def test_mac_count_matches_a_hand_count() -> None:
    net = TinyTranslator()
    h = w = 16
    hand = (
        (h * w * 8) * (3 * 9)  # conv 3->8 3x3 at 16x16 (after padding)
        + (8 * 8 * 8) * (8 * 9)  # conv 8->8 3x3 stride 2 -> 8x8
        + (8 * 8 * 8) * (8 * 9)  # transposed conv, counted at its 8x8 INPUT
        + (h * w * 3) * (8 * 9)  # conv 8->3 3x3 at 16x16
    )
    assert count_macs(net, torch.zeros(1, 3, h, w)) == hand
    assert count_macs(net, torch.zeros(2, 3, h, w)) == 2 * hand
    assert count_macs(net, torch.zeros(2, 3, h, w), per_sample=True) == hand
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    assert count_macs(grouped, torch.zeros(1, 8, 5, 5)) == 8 * 25 * 2 * 9
    grouped_t = nn.ConvTranspose2d(8, 4, 3, stride=2, groups=2)  # at its input: 8*5*5 elements x 2*9
    assert count_macs(grouped_t, torch.zeros(1, 8, 5, 5)) == (8 * 25) * (2 * 9)
    assert count_macs(nn.Linear(6, 5), torch.zeros(4, 6)) == 4 * 5 * 6
    # resampling, norms and activations are not multiply-accumulates
    free = nn.Sequential(nn.Upsample(scale_factor=2), nn.InstanceNorm2d(12), nn.ReLU(), nn.PixelShuffle(2))
    assert count_macs(free, torch.zeros(1, 12, 8, 8)) == 0


def test_mac_count_of_the_cyclegan_resnet9_generator_at_256() -> None:
    """The reference CycleGAN generator (ngf 64, 9 blocks, instance norm) on one 256x256 image.

    Pinned: 49,551,507,456 MACs with this project's rule (transposed convs at their input size).
    The GAN Compression paper (Li et al., 2020) reports 56.8 G for the same network because its
    profiler counts the two stride-2 transposed convs at their output size (4x each): the same
    network with resize-convolution upsampling (a 3x3 conv at the output size in their place)
    reproduces that number exactly. Both are independent of the weights, not of ``ngf``: MACs
    grow with ngf² (ngf 32 costs about a quarter)."""
    from training.networks.resnet import ResnetGenerator

    x = torch.zeros(1, 3, 256, 256)
    assert count_macs(ResnetGenerator(), x) == 49_551_507_456
    as_published = count_macs(ResnetGenerator(upsample="resize"), x)
    assert as_published == 56_799_264_768
    assert as_published / 1e9 == pytest.approx(56.8, abs=0.05)


def test_mac_count_of_a_sample_net_is_per_sample() -> None:
    net = TinySampler()
    per_sample = (8 * 7 * 7) * 16 + (8 * 7 * 7) * (1 * 16)  # linear + transposed conv at its input
    assert model_folder.macs_256(net, SAMPLE) == per_sample


# -- ONNX + parity -------------------------------------------------------------------------------
def test_export_translate_model_writes_a_valid_card_and_dynamic_onnx(tmp_path: Path) -> None:
    net = TinyTranslator().eval()
    metrics = [
        {"name": "fid", "value": 70.5, "split": "test", "protocol": "p", "command": "transfigure evaluate"}
    ]
    res = ex.export_net(
        net, TRANSLATE, name="tiny-translate", out_root=tmp_path, training=TRAINING, metrics=metrics,
        headline="fid", grid_rows=_grid(), options=ex.ExportOptions(prefer_dynamo=False),
    )  # fmt: skip
    folder = tmp_path / "tiny-translate"
    assert res.folder == folder
    card = ModelCard.load(folder)  # validates
    card.verify_file(folder)  # sha256 matches
    assert card.task == "translate" and card.input.multiple_of == 4 and card.headline().value == 70.5
    assert card.macs_256 == count_macs(net, torch.zeros(1, 3, 256, 256))
    assert card.parameters == sum(p.numel() for p in net.parameters())
    assert card.training.recipe_config["onnx_exporter"] == "torchscript"
    assert card.parity.exporter == "torchscript" and card.parity.weights == "trained" and card.notes == ""
    assert [(c.batch, c.size) for c in card.parity.cases] == onnx_export.parity_shapes(TRANSLATE)
    assert [c.max_abs_err for c in card.parity.cases] == [r.max_abs_err for r in res.parity]
    assert card.parity.max_abs_err() <= card.parity.tolerance == ex.ExportOptions().atol
    assert card.int8_gate is None and card.quality_bar is None
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.onnx", "samples.png"]
    assert (folder / "samples.png").stat().st_size <= grids.GRID_MAX_BYTES
    assert not list(tmp_path.glob(".tiny-translate*")), "temporary folders must not be left behind"

    sess = onnx_export.ort_session(folder / "model.onnx")
    assert [i.name for i in sess.get_inputs()] == [IMAGE_INPUT]
    assert [o.name for o in sess.get_outputs()] == [OUTPUT]
    x = torch.rand(3, 3, 20, 44) * 2 - 1  # another batch and an odd aspect ratio
    with torch.inference_mode():
        want = net(x).numpy()
    got = sess.run([OUTPUT], {IMAGE_INPUT: x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4


def test_parity_check_catches_a_model_changed_after_export(tmp_path: Path) -> None:
    net = TinyTranslator().eval()
    path = tmp_path / "m.onnx"
    onnx_export.export_onnx(net, TRANSLATE, path, prefer_dynamo=False)
    onnx_export.check_parity(net, path, TRANSLATE)  # the honest export passes
    with torch.no_grad():
        net.body[-2].bias += 0.01  # the net the card would describe is no longer the exported one
    with pytest.raises(
        onnx_export.ExportError, match=r"parity check failed: .* > 1e-04 .*max \|ort - torch\|"
    ):
        onnx_export.check_parity(net, path, TRANSLATE)


def test_export_sample_model_takes_z_and_label(tmp_path: Path) -> None:
    net = TinySampler().eval()
    ex.export_net(
        net, SAMPLE, name="tiny-sample", out_root=tmp_path, training=TRAINING,
        options=ex.ExportOptions(prefer_dynamo=False),
    )  # fmt: skip
    card = ModelCard.load(tmp_path / "tiny-sample")
    assert card.classes == ["apple", "cat", "fish"] and card.latent_dim == 8 and card.input is None
    sess = onnx_export.ort_session(tmp_path / "tiny-sample" / "model.onnx")
    assert [i.name for i in sess.get_inputs()] == [Z_INPUT, LABEL_INPUT]
    z, label = torch.randn(5, 8), torch.tensor([0, 1, 2, 1, 0])
    out = sess.run([OUTPUT], {Z_INPUT: z.numpy(), LABEL_INPUT: label.numpy()})[0]
    assert out.shape == (5, 1, 14, 14)


def test_invalid_card_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="name"):
        ex.export_net(
            TinyTranslator(), TRANSLATE, name="Not A Valid Name", out_root=tmp_path, training=TRAINING,
            options=ex.ExportOptions(prefer_dynamo=False),
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_reexport_replaces_the_folder_atomically(tmp_path: Path) -> None:
    opts = ex.ExportOptions(prefer_dynamo=False)
    first = ex.export_net(
        TinyTranslator(), TRANSLATE, name="m", out_root=tmp_path, training=TRAINING, options=opts
    )
    (tmp_path / "m" / "stale.txt").write_text("old")
    second = ex.export_net(
        TinyTranslator(), TRANSLATE, name="m", out_root=tmp_path, training=TRAINING, options=opts
    )
    assert first.card.sha256 != second.card.sha256  # new random weights
    assert ModelCard.load(tmp_path / "m").sha256 == second.card.sha256
    assert not (tmp_path / "m" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_int8_is_kept_only_within_the_metric_threshold(tmp_path: Path) -> None:
    net = TinyTranslator().eval()
    rng = np.random.default_rng(0)
    calib = [{IMAGE_INPUT: rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    reference = net(torch.from_numpy(calib[0][IMAGE_INPUT])).detach().numpy()

    def error_vs_torch(path: Path) -> float:  # lower is better; fp32 ~ 0, int8 > 0
        out = onnx_export.ort_session(path).run([OUTPUT], calib[0])[0]
        return float(np.abs(out - reference).mean()) + 1e-3

    metrics = [{"name": "err", "value": 0.5, "split": "test", "protocol": "p", "command": "c"}]
    kept = ex.export_net(
        net, TRANSLATE, name="q", out_root=tmp_path, training=TRAINING, calibration=calib, metrics=metrics,
        headline="err", int8_metric=error_vs_torch, command="transfigure export run --int8",
        options=ex.ExportOptions(prefer_dynamo=False, int8=True, int8_max_loss=1e9),
    )  # fmt: skip
    gate = ModelCard.load(tmp_path / "q").int8_gate  # what the card on disk says
    assert kept.card.precision == "int8" and gate == kept.int8 and gate.shipped == "int8"
    assert gate.metric == "err" and not gate.higher_is_better and gate.threshold == 1e9
    onnx_export.export_onnx(net, TRANSLATE, tmp_path / "fp32.onnx", prefer_dynamo=False)
    assert gate.fp32 == pytest.approx(error_vs_torch(tmp_path / "fp32.onnx"))
    assert gate.int8 == pytest.approx(error_vs_torch(tmp_path / "q" / "model.onnx"))  # the shipped file
    assert gate.speedup > 0 and gate.calibration_inputs == 4 and gate.command.endswith("--int8")
    assert [m.name for m in kept.card.metrics] == ["err"]  # the gate's figures are not metrics
    assert kept.card.shipped_headline()[0].value == gate.int8 and kept.card.notes == ""
    refused = ex.export_net(
        net, TRANSLATE, name="q", out_root=tmp_path, training=TRAINING, calibration=calib,
        int8_metric=error_vs_torch, options=ex.ExportOptions(prefer_dynamo=False, int8=True, int8_max_loss=0.0),
    )  # fmt: skip
    assert refused.card.precision == "fp32" and refused.int8.shipped == "fp32"
    assert refused.int8.relative_loss > 0 and refused.int8.metric == "headline"


def test_an_int8_export_can_keep_its_fp32_file_for_the_cuda_provider(tmp_path: Path) -> None:
    net = TinyTranslator().eval()
    rng = np.random.default_rng(0)
    calib = [{IMAGE_INPUT: rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)} for _ in range(2)]
    options = ex.ExportOptions(prefer_dynamo=False, int8=True, int8_max_loss=1e9, gpu_fp32=True)
    res = ex.export_net(
        net, TRANSLATE, name="g", out_root=tmp_path, training=TRAINING, calibration=calib,
        int8_metric=lambda path: 1.0, options=options,
    )  # fmt: skip
    card = ModelCard.load(tmp_path / "g")
    assert res.card.precision == "int8" and card.gpu_file is not None and card.gpu_file.precision == "fp32"
    fp32 = card.verify_gpu_file(tmp_path / "g")
    ops = {
        f: {n.op_type for n in onnx.load(tmp_path / "g" / f).graph.node} for f in ("model.onnx", fp32.name)
    }
    assert fp32.name == ex.GPU_FP32_FILE and "QuantizeLinear" in ops["model.onnx"] - ops[fp32.name]
    x = calib[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x[IMAGE_INPUT])).numpy()
    assert np.abs(onnx_export.ort_session(fp32).run([OUTPUT], x)[0] - want).max() < 1e-4  # the fp32 network
    # INT8 refused: the shipped file is the fp32 one, and there is no second file
    options = ex.ExportOptions(prefer_dynamo=False, int8=True, int8_max_loss=0.0, gpu_fp32=True)
    ex.export_net(
        net, TRANSLATE, name="g", out_root=tmp_path, training=TRAINING, calibration=calib,
        int8_metric=lambda path: 2.0 if path.name.startswith("model.int8") else 1.0, options=options,
    )  # fmt: skip
    card = ModelCard.load(tmp_path / "g")
    assert (
        card.precision == "fp32"
        and card.gpu_file is None
        and not (tmp_path / "g" / ex.GPU_FP32_FILE).exists()
    )


def test_quality_bar_is_recorded_and_checked(tmp_path: Path) -> None:
    bar = QualityBar.of([BarCriterion.judge("FID <= 75", "fid", 70.5, "<=", 75.0)])
    res = ex.export_net(
        TinyTranslator().eval(), TRANSLATE, name="b", out_root=tmp_path, training=TRAINING, quality_bar=bar,
        weights="dequantized_int8", options=ex.ExportOptions(prefer_dynamo=False),
    )  # fmt: skip
    card = ModelCard.load(tmp_path / "b")
    assert card.quality_bar == bar and card.quality_bar.met and card.parity.weights == "dequantized_int8"
    assert res.card == card
    with pytest.raises(onnx_export.ExportError, match="--quality-bar is not a valid quality-bar verdict"):
        model_folder.quality_bar_from_json('{"description": "x", "criteria": [], "met": true}')
    assert model_folder.quality_bar_from_json(bar.model_dump_json()) == bar


def _onnx_of(net: nn.Module, path: Path, channels: int = 3) -> Path:
    spec = TRANSLATE if channels == 3 else ExportSpec(**{**TRANSLATE.__dict__, "input_channels": channels})
    onnx_export.export_onnx(net.eval(), spec, path, prefer_dynamo=False)
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return onnx_export.ort_session(path).run([OUTPUT], {IMAGE_INPUT: x})[0]


@pytest.mark.parametrize(
    "kernel,pad,out_pad,bias",
    [(3, 1, 1, True), (4, 1, 0, True), (4, 1, 0, False), (2, 0, 0, True), (3, 1, 0, True)],
)
def test_int8_graph_rewrites_are_exact_in_fp32(tmp_path: Path, kernel, pad, out_pad, bias) -> None:
    import onnx

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.ConvTranspose2d(5, 6, kernel, stride=2, padding=pad, output_padding=out_pad, bias=bias),
        nn.Conv2d(6, 3, 3, padding=1),  # thin head
    )
    fp32 = _onnx_of(net, tmp_path / "fp32.onnx")
    model = onnx.load(str(fp32))
    rewritten = int8_graph.subpixel_conv_transpose(model)
    widened = int8_graph.widen_thin_convs(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    ops = [n.op_type for n in model.graph.node]
    doubles = kernel + out_pad - 2 * pad == 2  # output exactly 2x: the only layout rewritten
    assert len(rewritten) == int(doubles) and ("ConvTranspose" in ops) != doubles
    assert len(widened) == 2 + 4 * doubles  # every Conv here has < 16 outputs, the 4 phase convs too
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 12, 20)).astype(np.float32)
    want, got = _run(fp32, x), _run(tmp_path / "rewritten.onnx", x)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5


def _tiny_int8(tmp_path: Path, seed: int) -> tuple[nn.Module, Path, Path]:
    """TinyTranslator, its fp32 ONNX file and its INT8 file (calibrated on 4 random images)."""
    net = TinyTranslator().eval()
    fp32 = _onnx_of(net, tmp_path / "fp32.onnx")
    rng = np.random.default_rng(seed)
    calib = [{IMAGE_INPUT: rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    int8.quantize_int8(fp32, tmp_path / "int8.onnx", calib)
    return net, fp32, tmp_path / "int8.onnx"


def test_int8_graph_has_int8_upsampling_and_a_widened_head(tmp_path: Path) -> None:
    import onnx

    _, fp32, int8 = _tiny_int8(tmp_path, seed=1)
    graph = onnx.load(str(int8)).graph
    ops = [n.op_type for n in graph.node]
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops and "Slice" in ops
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    conv_weights = [made_by.get(n.input[1]) for n in graph.node if n.op_type == "Conv"]
    assert conv_weights and all(w == "DequantizeLinear" for w in conv_weights)  # every conv is int8
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 36, 40)).astype(np.float32)
    want, got = _run(fp32, x), _run(int8, x)
    assert got.shape == want.shape and np.abs(got - want).mean() < 0.1


def test_an_int8_file_gives_back_every_weight_of_the_net(tmp_path: Path) -> None:
    """Dequantizing the INT8 graph recovers each torch tensor, the split transposed kernels included."""
    from training.recipes import onnx_tensors_for

    net, _, int8 = _tiny_int8(tmp_path, seed=3)
    state = net.state_dict()
    found = onnx_tensors_for(int8, state, dequantize=True)
    assert set(found) == set(state)
    for key, value in state.items():
        want = value.numpy()
        # per-channel int8 rounds each weight by at most half its channel's step, and no channel's
        # step exceeds the tensor's max / 127 (biases are quantised on a finer scale)
        step = np.abs(want).max() / 127
        assert found[key].shape == want.shape and np.abs(found[key] - want).max() <= step, key
    assert onnx_tensors_for(int8, state).keys() < state.keys()  # not without dequantize


def test_int8_keeps_a_conv_transpose_it_cannot_rewrite_in_fp32(tmp_path: Path) -> None:
    import onnx

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 3, 3, stride=1, padding=1))
    fp32 = _onnx_of(net, tmp_path / "fp32.onnx")
    calib = [{IMAGE_INPUT: np.random.default_rng(2).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)}]
    int8.quantize_int8(fp32, tmp_path / "int8.onnx", calib)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    (convt,) = [n for n in graph.node if n.op_type == "ConvTranspose"]
    assert convt.input[1] in {t.name for t in graph.initializer}  # fp32 weights, no per-run dequantize


def test_metrics_from_eval_keep_the_exported_net_and_its_headline() -> None:
    report = {
        "metrics": [
            {
                "name": "fid_A2B",
                "value": 60.0,
                "split": "testA->testB",
                "protocol": "p",
                "command": "c",
                "net": "G_AB",
            },
            {
                "name": "fid_B2A",
                "value": 61.0,
                "split": "testB->testA",
                "protocol": "p",
                "command": "c",
                "net": "G_BA",
            },
            {"name": "steps", "value": 2.0, "split": "-", "protocol": "p", "command": "c"},
        ],
        "headline": {"G_AB": "fid_A2B", "G_BA": "fid_B2A"},
    }
    metrics, head = model_folder.metrics_from_eval(report, "G_AB")
    assert [m["name"] for m in metrics] == ["fid_A2B", "steps"] and head == "fid_A2B"
    assert all("net" not in m for m in metrics)
    json.dumps(metrics)


# -- catalog -------------------------------------------------------------------------------------
def test_catalog_knows_the_shared_datasets_and_not_user_folders(tmp_path: Path) -> None:
    q = provenance("../shared/data/quickdraw")
    assert "CC BY 4.0" in q.license and "sukumr/Doodle-Classifier" in q.source
    assert "Jacklu0831" in provenance("/x/summer2winter_yosemite/trainA").source
    for known in ("facades", "monet_kaggle", "T91", "Set5"):
        assert provenance(f"/data/{known}").license != UNKNOWN_LICENSE
    mine = provenance(tmp_path / "my_photos")
    assert mine.name == "my_photos" and mine.license == UNKNOWN_LICENSE and str(tmp_path) in mine.source


def test_cards_record_paths_relative_to_the_project_or_by_name(tmp_path: Path) -> None:
    from training.provenance import config_dict, portable_path

    base = tmp_path / "project"
    assert portable_path(base / "runs" / "x", base) == "runs/x"
    assert portable_path(tmp_path / "shared" / "data" / "monet", base) == "../shared/data/monet"
    assert portable_path("/elsewhere/deep/data/monet", base) == "monet"
    assert portable_path("/elsewhere/deep/data/monet", base, elsewhere="keep") == "/elsewhere/deep/data/monet"
    assert portable_path("relative/stays", base) == "relative/stays"

    @dataclasses.dataclass
    class Cfg:
        data: str = "/elsewhere/deep/data/monet"
        steps: int = 3

    assert config_dict(Cfg()) == {"data": "monet", "steps": 3}
