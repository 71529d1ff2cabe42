"""The independent domain judge: a small CNN trained from scratch on the two training domains.

The Inception judge (:class:`training.fid.DomainJudge`) is a linear probe on ImageNet features. A
translator trained with losses on another ImageNet network's features can move those features
without changing what a viewer sees; a judge that shares no pretrained weights with anything is the
check on that. :func:`domain_cnn_judge` fits a :class:`DomainCNN` on the *training* images of both
domains only (random 128-px crops and flips of each image resized to a short side of 144, the two
domains sampled equally, AdamW, fixed seed), so a test image's verdict never saw that image.

At judging time an image of any size and aspect is resized to a short side of 128 (antialiased) and
the fully convolutional net's logits are averaged over the whole image. A fitted judge is cached in
the process and, given a folder (``--feature-cache``), on disk by the hash of its training files
and settings, so measuring several models or checkpoints fits it once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.files import atomic_write

PROTOCOL = (
    "a CNN trained from scratch (no pretrained weights) on the training splits of both domains "
    "(128-px crops, short side 144; {steps} steps of {batch} images, AdamW, seed {seed}); each image "
    "resized to a short side of {size} and judged whole"
)


@dataclass(frozen=True)
class JudgeSettings:
    size: int = 128
    load: int = 144
    steps: int = 600  # at most; fewer when that is more than ``epochs`` passes over the images
    epochs: int = 20
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0
    width: int = 32

    def steps_for(self, n_images: int) -> int:
        return max(1, min(self.steps, -(-self.epochs * n_images // self.batch)))

    def describe(self, steps: int | None = None) -> str:
        steps = self.steps if steps is None else steps
        return PROTOCOL.format(steps=steps, batch=self.batch, seed=self.seed, size=self.size)


class DomainCNN(nn.Module):
    """Four stride-2 conv stages (BN, LeakyReLU), global average pooling, one logit: "domain B"."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers, cin = [], 3
        for i in range(4):
            cout = width * 2**i
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(cin, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))[:, 0]


def _resize_short(x: Tensor, short: int) -> Tensor:
    h, w = x.shape[-2:]
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _to_float(x8: Tensor) -> Tensor:
    return x8.float() / 127.5 - 1.0


class DomainCNNJudge:
    """A fitted :class:`DomainCNN`: ``prob_b(images)`` and ``share(images, domain)`` on uint8 N x 3 x H x W."""

    def __init__(self, net: DomainCNN, settings: JudgeSettings, steps: int) -> None:
        self.net, self.settings, self.steps = net.eval(), settings, steps

    def describe(self) -> str:
        return self.settings.describe(self.steps)

    @torch.no_grad()
    def prob_b(self, x8: Tensor) -> np.ndarray:
        x = _resize_short(_to_float(x8), self.settings.size)
        return torch.sigmoid(self.net(x)).numpy()

    def predicts(self, probs_b: np.ndarray, domain: str) -> np.ndarray:
        return probs_b > 0.5 if domain == "B" else probs_b <= 0.5


def _load_set(refs: list, load: int) -> list[Tensor]:
    out = []
    for ref in refs:
        x = torch.from_numpy(np.array(ref.load())).permute(2, 0, 1)[None]
        out.append(_resize_short(_to_float(x), load)[0])
    return out


def _crops(images: list[Tensor], idx: np.ndarray, size: int, rng: np.random.Generator) -> Tensor:
    batch = []
    for i in idx:
        im = images[i]
        h, w = im.shape[-2:]
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = im[:, y : y + size, x : x + size]
        batch.append(crop.flip(-1) if rng.random() < 0.5 else crop)
    return torch.stack(batch)


def fit_domain_cnn(refs_a: list, refs_b: list, settings: JudgeSettings) -> DomainCNNJudge:
    """Train the judge on ``refs_a`` (label 0) and ``refs_b`` (label 1), half of each batch from each;
    a ref is anything with ``load() -> H x W x 3 uint8`` (:class:`training.evaluate.ImageRef`)."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    sets = (_load_set(refs_a, settings.load), _load_set(refs_b, settings.load))
    net = DomainCNN(settings.width)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    steps = settings.steps_for(len(refs_a) + len(refs_b))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    half = settings.batch // 2
    labels = torch.cat([torch.zeros(half), torch.ones(half)])
    net.train()
    for _ in range(steps):
        x = torch.cat([_crops(s, rng.integers(0, len(s), half), settings.size, rng) for s in sets])
        loss = F.binary_cross_entropy_with_logits(net(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return DomainCNNJudge(net, settings, steps)


_JUDGES: dict[tuple, DomainCNNJudge] = {}


def _key(refs_a: list, refs_b: list, settings: JudgeSettings) -> str:
    """Names, sizes and halves of the training files plus the settings (not paths or times, so a copy
    of the data on another machine finds the same cached judge)."""
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for refs in (refs_a, refs_b):
        for ref in refs:
            h.update(f"{ref.path.name}\0{ref.path.stat().st_size}\0{ref.half}\0".encode())
        h.update(b"\1")
    return h.hexdigest()[:20]


def domain_cnn_judge(
    refs_a: list,
    refs_b: list,
    cache: str | Path | None = None,
    settings: JudgeSettings | None = None,
) -> DomainCNNJudge:
    """The judge for these training images (:class:`training.evaluate.ImageRef`), fitted once per
    process (and once per ``cache`` folder)."""
    settings = settings or JudgeSettings()
    key = _key(refs_a, refs_b, settings)
    here = (key, tuple(r.key() for r in refs_a), tuple(r.key() for r in refs_b))  # these very files
    if here in _JUDGES:
        return _JUDGES[here]
    path = Path(cache) / f"domain_cnn_{key}.pt" if cache else None
    if path is not None and path.is_file():
        net = DomainCNN(settings.width)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        judge = DomainCNNJudge(net, settings, settings.steps_for(len(refs_a) + len(refs_b)))
    else:
        judge = fit_domain_cnn(refs_a, refs_b, settings)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: torch.save(judge.net.state_dict(), f))
    _JUDGES[here] = judge
    return judge


def clear_judges() -> None:
    """Forget the judges fitted in this process (not those cached on disk)."""
    _JUDGES.clear()


__all__ = [
    "DomainCNN",
    "DomainCNNJudge",
    "JudgeSettings",
    "clear_judges",
    "domain_cnn_judge",
    "fit_domain_cnn",
]
