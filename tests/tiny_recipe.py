"""A minimal translate recipe that lives outside ``training/``: the recipe contract's smallest user.

One 3x3 convolution ``G`` maps domain A to domain B of an unpaired folder (``trainA``/``trainB``,
``testA``/``testB``), trained to give its outputs B's mean colour while keeping its input (L1).
Registered with ``training.recipes.register_recipe("tiny", "tests.tiny_recipe")``, it is trained,
evaluated and exported by ``transfigure`` through the contract alone.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from training.config import TrainConfig, add_config_arguments
from training.data import UnpairedImageFolder, resolve_unpaired_files
from training.loop import Runtime, batch_stream, cli_train, image_grid
from training.recipes import ExportSpec

NAME = "tiny"
TRANSLATE_NETS = ("G",)


@dataclass
class Config(TrainConfig):
    crop_size: int = field(default=32, metadata={"help": "training crop = the model's native size"})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate"})
    content_weight: float = field(default=1.0, metadata={"help": "weight of the L1 to the input"})


class TinyTranslator(nn.Module):
    """A 3x3 convolution and tanh: any input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.conv(x))


def build_inference_nets(config: Config) -> dict[str, nn.Module]:
    return {"G": TinyTranslator()}


def export_specs(config: Config) -> dict[str, ExportSpec]:
    return {
        "G": ExportSpec(
            task="translate", method=NAME, description="tiny test translator A -> B", output_channels=3,
            input_channels=3, input_range=(-1.0, 1.0), multiple_of=1, native_size=config.crop_size,
            dataset={"name": "test fixture", "source": "tests/fixtures", "license": "unknown (user data)"},
        )
    }  # fmt: skip


# -- evaluation and export -------------------------------------------------------------------------
def translation_images(config: Config, net: str = "G"):
    from training.evaluate import ImageRef, TranslationImages

    def refs(phase: str) -> tuple[list[ImageRef], list[ImageRef]]:
        a, b = resolve_unpaired_files(config.data, phase)
        return [ImageRef(f) for f in a], [ImageRef(f) for f in b]

    (test_a, test_b), (train_a, train_b) = refs("test"), refs("train")
    return TranslationImages(
        inputs=[(r,) for r in test_a], targets=test_b, judge_a=train_a, judge_b=train_b, target_domain="B",
        tag="A2B", split=f"testA -> testB of {Path(config.data).name}",
    )  # fmt: skip


def translation_data(config: Config, net: str = "G"):
    from training.evaluate import TranslationData, image_file_batches

    (test_a, test_b), (train_a, _) = (resolve_unpaired_files(config.data, p) for p in ("test", "train"))
    crop = config.crop_size
    return TranslationData(
        test_inputs=lambda limit, bs: ((x,) for x in image_file_batches(test_a, crop, bs, limit)),
        test_targets=lambda limit, bs: image_file_batches(test_b, crop, bs, limit),
        train_inputs=lambda limit, bs: image_file_batches(train_a, crop, bs, limit),
        split="testA -> testB",
    )


def evaluate(run, report, options, data: str | None = None, judge: str | None = None) -> str:
    from training.evaluate import evaluate_run_translation

    evaluate_run_translation(run, report, options, TRANSLATE_NETS, translation_images)
    return run.config.data


def export_io(run, net: str, spec: ExportSpec, options):
    from training.export_io import translation_export_io

    return translation_export_io(run.nets[net], spec, translation_data(run.config, net), options)


# -- training --------------------------------------------------------------------------------------
class TinyRecipe:
    generators = ("G",)

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.dataset = UnpairedImageFolder(cfg.data, "train", crop_size=cfg.crop_size)
        self.nets = {"G": build_inference_nets(cfg)["G"].to(rt.device).train()}
        self.optimizers = {"G": torch.optim.Adam(self.nets["G"].parameters(), lr=cfg.lr)}
        self.schedulers: dict = {}

    def batches(self, start_step: int):
        return batch_stream(self.dataset, self.cfg, self.rt, start_step)

    def train_step(self, batch: dict, step: int) -> dict[str, Tensor]:
        a, b = batch["A"].to(self.rt.device), batch["B"].to(self.rt.device)
        with self.rt.autocast():
            fake = self.nets["G"](a).float()
        colour = (fake.mean((2, 3)) - b.mean((2, 3))).abs().mean()
        loss = colour + self.cfg.content_weight * (fake - a).abs().mean()
        self.optimizers["G"].zero_grad(set_to_none=True)
        self.rt.backward(loss)
        self.rt.step(self.optimizers["G"])
        return {"loss": loss.detach()}

    def sample_images(self, generators: dict[str, nn.Module], step: int) -> Tensor:
        a = self.dataset.load_item(0, 0)["A"][None].to(self.rt.device)
        return image_grid([a, generators["G"](a)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, Config, aliases={"crop_size": ["--size"]})


def run(args: argparse.Namespace) -> int:
    return cli_train(NAME, Config, TinyRecipe, args)
