"""The image history buffer of CycleGAN (Shrivastava et al. 2017; Zhu et al. 2017)."""

from __future__ import annotations

import random

import torch
from torch import Tensor


class ImagePool:
    """Feeds the discriminator a mix of current and past generated images, which damps the
    oscillation between G and D. ``query(images)`` returns a batch of the same size: each image is
    either itself (pool not full yet, or with probability 1/2) or a stored older fake, which it
    then replaces. ``size=0`` disables the pool. Randomness comes from Python's ``random`` (seeded
    and checkpointed by the loop), the contents from :meth:`state_dict`."""

    def __init__(self, size: int = 50) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif random.random() < 0.5:
                i = random.randrange(self.size)
                old = self.images[i].to(image.device)
                self.images[i] = image.clone()
                out.append(old)
            else:
                out.append(image)
        return torch.cat(out, dim=0)

    def state_dict(self) -> dict:
        return {"size": self.size, "images": [t.cpu() for t in self.images]}

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        self.size = int(state["size"])
        self.images = [t.to(device) if device is not None else t for t in state["images"]]
