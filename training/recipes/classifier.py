"""Classifier judge for conditional samples (`transfigure train classifier`).

A small CNN trained on the same labelled data and split as the cGAN (``training/data/labelled.py``).
It is not a product: it is the *judge* that evaluation uses to ask "does a sample of class y look
like class y?" (:func:`judge_samples`). It trains with the shared loop, so its run folder has the
usual ``checkpoints/last.pt`` with the net under ``nets["C"]``; ``training.recipes.load_run``
rebuilds it (``build_inference_nets`` returns ``{"C": net}``). It is never exported to the zoo, so
``export_specs`` returns ``{}``, and it has no ``evaluate``: it prints its own test accuracy.

Training: AdamW, cross-entropy, random shifts of up to ``--shift`` px (drawings and digits keep
their meaning when moved, unlike when flipped), learning rate constant then decaying linearly to 0.
At every sample step and at the end the test-split accuracy is printed; the sample grid shows the
first test images of each class, one row per class.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from training.config import ConfigError, TrainConfig, add_config_arguments
from training.data.labelled import LabelledImages, load_split, load_train_set, resolve_data_fields
from training.diffaug import translate
from training.distributed import is_main_process
from training.loop import Runtime, batch_stream, cli_train, image_grid, linear_decay_schedule, to_device
from training.networks.conditional import OUTPUT_SIZES, SampleClassifier
from training.recipes import ExportSpec, load_run

NAME = "classifier"
GRID_PER_CLASS = 8


@dataclass
class Config(TrainConfig):
    data: str = field(
        default="",
        metadata={"help": "labelled data, as for `train cgan` (.npy folder, idx files or class sub-folders)"},
    )
    classes: tuple[str, ...] = field(
        default=(), metadata={"help": "these classes only, in this order (default: all, sorted)"}
    )
    channels: int = field(default=0, metadata={"help": "image channels, 1 or 3 (0: from the data)"})
    image_size: int = field(
        default=28, metadata={"help": "input size (use the cGAN's)", "choices": OUTPUT_SIZES}
    )
    test_fraction: float = field(default=0.1, metadata={"help": "last fraction of each class held out"})
    width: int = field(default=32, metadata={"help": "channels of the first conv stage"})
    dropout: float = field(default=0.25, metadata={"help": "dropout before the linear head"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    shift: int = field(default=2, metadata={"help": "random translation of up to this many px (0: off)"})
    steps: int = field(default=3000, metadata={"help": "total optimisation steps (iterations)"})
    batch_size: int = field(default=64, metadata={"help": "images per step and process"})
    num_workers: int = field(
        default=0, metadata={"help": "data loading processes (the data is in memory: 0 is fastest)"}
    )
    log_every: int = field(default=100, metadata={"help": "print and log losses every N steps"})
    sample_every: int = field(default=500, metadata={"help": "test accuracy + image grid every N steps"})


def build_inference_nets(config: Config) -> dict[str, nn.Module]:
    if not config.classes or config.channels not in (1, 3):
        raise ConfigError("the config names no classes/channels; they are filled in from --data at training")
    return {"C": SampleClassifier(len(config.classes), config.channels, config.width, config.dropout)}


def export_specs(config: Config) -> dict[str, ExportSpec]:
    return {}  # a judge for evaluation, not a zoo model


# ------------------------------------------------------------------------------------------------
# using a classifier: accuracy on data, and judging conditional samples
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(net: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted class of every image (N x C x S x S in [-1, 1], at the net's input size).
    Runs in eval mode on the net's device; returns labels on the CPU."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device).float()
            out.append(net(x).argmax(dim=1).cpu())
    finally:
        net.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(net: nn.Module, images: Tensor, labels: Tensor) -> float:
    return float((predict(net, images) == labels.cpu()).float().mean())


def held_out_accuracy(net: nn.Module, config: Any) -> tuple[float, int]:
    """Accuracy on the held-out split of ``config.data`` (same split function as training)."""
    data = load_split(
        config.data, "test", config.test_fraction, list(config.classes), config.image_size, config.channels
    )
    if len(data) == 0:
        raise ValueError(f"{config.data}: the test split is empty (raise --test-fraction)")
    ds = LabelledImages(data, config.image_size)
    return accuracy(net, ds.images, ds.labels), len(ds)


@torch.no_grad()
def judge_samples(
    judge: nn.Module,
    generator: nn.Module,
    n_per_class: int = 100,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[int, float]:
    """Per class y: the fraction of ``n_per_class`` samples ``G(z, y)`` the judge calls y.
    The noise comes from its own seeded generator, so the answer is reproducible."""
    device = next(generator.parameters()).device
    g_mode = generator.training
    generator.eval()
    rng = torch.Generator().manual_seed(seed)
    result = {}
    try:
        for c in range(generator.num_classes):
            hits = 0
            for i in range(0, n_per_class, batch_size):
                n = min(batch_size, n_per_class - i)
                z = torch.randn(n, generator.latent_dim, generator=rng).to(device)
                images = generator(z, torch.full((n,), c, dtype=torch.long, device=device))
                size = _input_size(judge)
                if size is not None and images.shape[-1] != size:
                    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
                hits += int((predict(judge, images) == c).sum())
            result[c] = hits / n_per_class
    finally:
        generator.train(g_mode)
    return result


def _input_size(judge: nn.Module) -> int | None:
    return getattr(judge, "input_size", None)


def load_judge(run: str | Path) -> tuple[nn.Module, Any]:
    """The classifier of a ``train classifier`` run (eval mode) and its config."""
    loaded = load_run(run)
    if loaded.recipe != NAME:
        raise ValueError(
            f"{run}: a '{loaded.recipe}' run, not a classifier run (train one with `train classifier`)"
        )
    net = loaded.nets["C"]
    net.input_size = loaded.config.image_size  # type: ignore[attr-defined]
    return net, loaded.config


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Translate each image by up to ``max_shift`` px (background -1 fills in)."""
    return translate(x, fill=-1.0, max_shift=max_shift, generator=generator)


class ClassifierRecipe:
    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.dataset = load_train_set(cfg)
        self.C = build_inference_nets(cfg)["C"].to(rt.device)
        self.nets = {"C": self.C}
        self.generators = ("C",)
        opt = torch.optim.AdamW(self.C.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.optimizers = {"C": opt}
        self.schedulers = {"C": linear_decay_schedule(opt, cfg.steps)}
        test = load_split(
            cfg.data, "test", cfg.test_fraction, list(cfg.classes), cfg.image_size, cfg.channels
        )
        self.test = LabelledImages(test, cfg.image_size) if len(test) else None

    def batches(self, start_step: int):
        return batch_stream(self.dataset, self.cfg, self.rt, start_step)

    def train_step(self, batch: Any, step: int) -> dict[str, Tensor]:
        x, y = batch
        x = random_shift(x, self.cfg.shift)  # global torch RNG: saved and restored with checkpoints
        x, y = to_device((x, y), self.rt.device)
        with self.rt.autocast():
            logits = self.C(x)
        loss = F.cross_entropy(logits.float(), y)
        opt = self.optimizers["C"]
        opt.zero_grad(set_to_none=True)
        self.rt.backward(loss)
        self.rt.step(opt)
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss.detach(), "train_acc": acc}  # tensors: no GPU sync per step

    def sample_images(self, generators: dict[str, nn.Module], step: int) -> Tensor:
        if self.test is None:
            return image_grid([self.dataset.images[:GRID_PER_CLASS]])
        acc = accuracy(generators["C"], self.test.images, self.test.labels)

        tqdm.write(f"step {step}: test accuracy {acc:.4f} ({len(self.test)} images)")
        labels = self.test.labels.numpy()
        rows = []
        for c in range(len(self.cfg.classes)):
            idx = np.flatnonzero(labels == c)[:GRID_PER_CLASS]
            imgs = self.test.images[idx]
            if len(imgs) < GRID_PER_CLASS:  # keep the grid rectangular
                pad = torch.full((GRID_PER_CLASS - len(imgs), *self.test.images.shape[1:]), -1.0)
                imgs = torch.cat([imgs, pad])
            rows.append(imgs)
        return image_grid(rows, (-1.0, 1.0))


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, Config)


def run(args: argparse.Namespace) -> int:
    code = cli_train(NAME, Config, ClassifierRecipe, args, prepare=resolve_data_fields)
    if code == 0 and is_main_process():
        out = Path(getattr(args, "out", "") or Path("runs") / NAME)
        net, saved = load_judge(out)
        acc, n = held_out_accuracy(net, saved)
        print(f"test accuracy: {acc:.4f} on {n} held-out images ({out})")
    return code
