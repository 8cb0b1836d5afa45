"""A stand-in detector and dataset for engine tests (the loss-dict contract, seconds to train).

``TinyDetector(images, targets)`` returns ``loss_cls`` (cross-entropy of a per-image class guess
against the image's first label) and ``loss_box`` (smooth-L1 of a per-image box guess against the
mean target box / image size), each the mean over the batch, so a batch's loss is the mean of its
images' losses (what DDP's gradient averaging needs). It draws a random number per forward (like
RoI sampling), so RNG restoration on resume matters.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

from rcnn.structures import Targets

CLASSES = ["a", "b", "c"]


class TinyDetector(nn.Module):
    def __init__(self, delay: float = 0.0, *, noisy: bool = True, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        # GroupNorm normalises each image alone, so a batch split over processes gives the same
        # gradients; BatchNorm (running statistics) is used to check that validation leaves them.
        self.norm = nn.BatchNorm2d(4) if batch_norm else nn.GroupNorm(2, 4)
        self.cls = nn.Linear(4, len(CLASSES))
        self.box = nn.Linear(4, 4)
        self.class_names = list(CLASSES)
        self.delay = delay
        self.noisy = noisy

    def features(self, images: list[torch.Tensor]) -> torch.Tensor:
        device = self.conv.weight.device
        batch = torch.stack([image.to(device).float() / 255.0 for image in images])
        return F.relu(self.norm(self.conv(batch))).mean(dim=(2, 3))  # [B, 4]

    def forward(self, images: list[torch.Tensor], targets: list[Targets] | None = None):
        if self.delay:
            time.sleep(self.delay)
        feats = self.features(images)
        if targets is None:
            return self.cls(feats).softmax(-1)
        # a random draw per step, as RoI sampling does (off where ranks must agree exactly)
        noise = 1.0 + 0.01 * torch.rand(()) if self.noisy else 1.0
        labels = torch.stack([t.labels[0] for t in targets]).to(feats.device)
        size = torch.tensor([list(t.image_size[::-1]) * 2 for t in targets], dtype=torch.float32)
        goal = torch.stack([t.boxes.mean(0) for t in targets]).to(feats.device) / size
        loss_cls = F.cross_entropy(self.cls(feats), labels)
        loss_box = F.smooth_l1_loss(self.box(feats) * noise, goal)
        return {"loss_cls": loss_cls, "loss_box": loss_box, "acc": torch.tensor(0.5)}


class TinySet(torch.utils.data.Dataset):
    """``num`` images 16x16 with one box each; ``bad_ids`` get an infinite box (non-finite loss).

    Takes ``(index, seed)`` keys like ``DetectionDataset``: the seed drives a random flip.
    """

    def __init__(self, num: int = 8, bad_ids: tuple[int, ...] = ()) -> None:
        self.num = num
        self.bad_ids = set(bad_ids)
        self.class_names = list(CLASSES)

    def __len__(self) -> int:
        return self.num

    def aspect_ratios(self) -> list[float]:
        return [1.0] * self.num

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        gen = torch.Generator().manual_seed(1000 + index)
        image = torch.randint(0, 256, (3, 16, 16), generator=gen, dtype=torch.uint8)
        x1, y1 = float(index % 5), float(index % 3)
        box = torch.tensor([[x1, y1, x1 + 8.0, y1 + 9.0]])
        if index in self.bad_ids:
            box[0, 2] = float("inf")
        if seed is not None and torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5:
            image = image.flip(-1)
            box = torch.stack([16 - box[:, 2], box[:, 1], 16 - box[:, 0], box[:, 3]], dim=1)
        targets = Targets(
            boxes=box,
            labels=torch.tensor([index % len(CLASSES)]),
            ignore=torch.zeros(1, dtype=torch.bool),
            image_id=100 + index,
            image_size=(16, 16),
            orig_size=(16, 16),
        )
        return image, targets


def tiny_config(**overrides):
    from rcnn.config import TrainConfig

    cfg = TrainConfig(
        network="tiny",
        dataset="tiny",
        batch_size=2,
        max_iters=12,
        lr=0.05,
        lr_warmup=3,
        lr_decay_epoch=[2.0],
        num_workers=0,
        seed=5,
        save_interval="3it",
        val_interval="0",
        log_interval=4,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.validate()
    return cfg
