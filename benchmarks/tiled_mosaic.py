"""Small-object recall with and without tiles, on a synthetic mosaic with known objects.

The mosaic pastes shapes validation images (128 px, the size the shapes model trains and tests
at) on a grid into one large image, so every object's box is known. The model resizes a whole
mosaic to its test size (128 px short side) and its objects shrink below a pixel or two; with
``--tile 128`` each window is seen at the training scale.

    PYTHONPATH=. python -m benchmarks.tiled_mosaic --checkpoint runs/shapes/last.pth \
        --width 2048 --height 1536 --tile 128 --overlap 0.25

Prints recall (a ground-truth box matched by a detection of its class, IoU >= 0.5, score >=
``--score``), precision, detections and seconds, for the plain model, the tiled one, and the model
on each pasted image alone (the reference: the best tiling could do with this model).
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.ops import box_iou

from rcnn.data import build_dataset
from rcnn.engine.checkpoint import load_model
from rcnn.engine.tiling import TiledPredictor
from rcnn.models.shapes_preset import IMAGE_SIZE, NUM_TRAIN
from rcnn.structures import Detections


def make_mosaic(width: int, height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 ``[3, H, W]`` mosaic of shapes val images, its boxes ``[N, 4]`` and labels ``[N]``;
    the pasted images start every ``IMAGE_SIZE`` pixels from the top-left corner."""
    dataset = build_dataset(
        "shapes", "val", num_train=NUM_TRAIN, num_val=100, image_size=IMAGE_SIZE
    )
    mosaic = torch.zeros(3, height, width, dtype=torch.uint8)
    boxes, labels = [], []
    index = 0
    for y in range(0, height - IMAGE_SIZE + 1, IMAGE_SIZE):
        for x in range(0, width - IMAGE_SIZE + 1, IMAGE_SIZE):
            image, targets = dataset[index % len(dataset)]
            mosaic[:, y : y + IMAGE_SIZE, x : x + IMAGE_SIZE] = image
            keep = ~targets.ignore
            boxes.append(targets.boxes[keep] + torch.tensor([x, y, x, y]))
            labels.append(targets.labels[keep])
            index += 1
    return mosaic, torch.cat(boxes), torch.cat(labels)


def recall_precision(dets, boxes, labels, score: float) -> tuple[float, float, int]:
    """Greedy matching by score at IoU >= 0.5, same class."""
    keep = dets.scores >= score
    pred, pred_labels = dets.boxes[keep], dets.labels[keep]
    taken = torch.zeros(len(boxes), dtype=torch.bool)
    hits = 0
    ious = box_iou(pred, boxes) if len(pred) else torch.zeros(0, len(boxes))
    for row in range(len(pred)):
        candidates = (ious[row] >= 0.5) & (labels == pred_labels[row]) & ~taken
        if candidates.any():
            taken[int(torch.argmax(ious[row] * candidates))] = True
            hits += 1
    return hits / max(len(boxes), 1), hits / max(len(pred), 1), len(pred)


class _PerSource:
    """The model on each pasted ``IMAGE_SIZE`` image separately: what the model finds at its
    own scale with no tiling question (the reference for the tiled row)."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, images: list[torch.Tensor]) -> list[Detections]:
        mosaic = images[0]
        parts = []
        for y in range(0, mosaic.shape[1] - IMAGE_SIZE + 1, IMAGE_SIZE):
            for x in range(0, mosaic.shape[2] - IMAGE_SIZE + 1, IMAGE_SIZE):
                dets = self.model([mosaic[:, y : y + IMAGE_SIZE, x : x + IMAGE_SIZE]])[0]
                parts.append((dets.boxes + torch.tensor([x, y, x, y]), dets.scores, dets.labels))
        return [Detections(*(torch.cat(column) for column in zip(*parts, strict=True)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=1536)
    parser.add_argument("--tile", type=int, default=IMAGE_SIZE)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--score", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    mosaic, boxes, labels = make_mosaic(args.width, args.height)
    model = load_model(args.checkpoint).eval()
    model.has_mask = False  # boxes only: full-resolution masks of the mosaic are not needed
    print(f"mosaic {args.width}x{args.height}, {len(boxes)} objects (median side "
          f"{float((boxes[:, 2:] - boxes[:, :2]).min(1).values.median()):.0f} px)")  # fmt: skip
    tiled = TiledPredictor(model, args.tile, args.overlap, max_detections=20 * len(boxes))
    print("| inference | recall | precision | detections | seconds |\n|---|---|---|---|---|")
    runs = [("whole image", model), (f"tiles {args.tile}, overlap {args.overlap}", tiled),
            ("each pasted image alone (reference)", _PerSource(model))]  # fmt: skip
    for name, predictor in runs:
        start = time.perf_counter()
        dets = predictor([mosaic])[0]
        seconds = time.perf_counter() - start
        recall, precision, count = recall_precision(dets, boxes, labels, args.score)
        print(f"| {name} | {recall:.3f} | {precision:.3f} | {count} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
