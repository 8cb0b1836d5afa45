"""2. Train Mask RCNN end-to-end on MS COCO -- GluonCV's tutorial with rcnn's API.

The sections and their order follow the GluonCV tutorial (seed 000), an extension of the
Faster R-CNN one (``train_faster_rcnn_voc.py``); each step prints what the tutorial prints. Where
rcnn does something differently from GluonCV, a ``# deviation from gluoncv`` comment says so.

Run it on the real COCO (``~/.cache/rcnn/datasets/coco/annotations/instances_train2017.json``,
``train2017/``, ...)::

    python examples/train_mask_rcnn_coco.py

or, in seconds, on any COCO json with polygons, e.g. the balloon sample::

    python examples/train_mask_rcnn_coco.py --data-root ../shared/data/balloon \
        --short 128 --max-size 192 --backbone resnet18 --rois 32 --no-pretrained-base \
        --model-lines 20 --output /tmp/coco_tutorial
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from _tutorial import (
    all_finite,
    get_network,
    heading,
    parse_args,
    print_model,
    run,
    save_axes,
    scalars,
    shape,
    total_loss,
    write_summary,
)

from rcnn.data import TrainTransform, ValTransform, build_dataset
from rcnn.data import masks as tmask
from rcnn.data.loader import build_test_loader, build_train_loader
from rcnn.data.transforms import resized_size
from rcnn.engine.optim import WarmupScheduler, build_optimizer
from rcnn.models.box_head import box_losses
from rcnn.models.mask_head import mask_loss
from rcnn.models.rpn import rpn_losses
from rcnn.structures import Targets, is_rle
from rcnn.visualize import plot_bbox, plot_mask

# GluonCV's train_mask_rcnn.py: lr 0.00125 per image, wd 1e-4 (none on biases), momentum 0.9,
# linear warmup from 1/3 over max(8000 / batch_size, 1000) iterations
LR_PER_IMAGE, WD, MOMENTUM, WARMUP_FACTOR = 0.00125, 1e-4, 0.9, 1.0 / 3


def dataset_section(args, summary: dict):
    heading("Dataset")
    # typically we use train2017 as training data and val2017 as validation data; COCO has images
    # without any objects annotated, which must be skipped during training to prevent empty labels
    spec = args.data_root or "coco"
    train_dataset = build_dataset(spec, "train", skip_empty=True)
    val_dataset = build_dataset(spec, "val", skip_empty=False)
    print("Training images:", len(train_dataset))
    print("Validation images:", len(val_dataset))
    summary.update(num_train=len(train_dataset), num_val=len(val_dataset))
    summary["class_names"] = train_dataset.class_names
    return train_dataset, val_dataset


def polygon_shapes(masks) -> list:
    """GluonCV's ``[[poly.shape for poly in polys] for polys in segm]``: (points, 2) each."""
    return [
        "RLE" if is_rle(polys) else [tuple(np.asarray(p).reshape(-1, 2).shape) for p in polys]
        for polys in masks
    ]


def to_bitmaps(targets: Targets) -> np.ndarray:
    """uint8 ``[N, H, W]`` full-image masks (GluonCV's ``tmask.to_mask`` per instance)."""
    height, width = targets.image_size
    bitmaps = [tmask.to_bitmap(polys, height, width) for polys in targets.masks]
    return np.stack(bitmaps) if bitmaps else np.zeros((0, height, width), np.uint8)


def data_transform_section(args, train_dataset, output: Path, summary: dict):
    heading("Data transform")
    index = 6 % len(train_dataset)
    # deviation from gluoncv: a sample is (uint8 image [3, H, W], Targets); the polygons are in
    # ``Targets.masks`` (one list of flat [x0, y0, x1, y1, ...] arrays per instance, or RLE).
    train_image, train_label = train_dataset[index]
    bboxes, cids, train_segm = train_label.boxes, train_label.labels, train_label.masks
    print(
        "image:", tuple(train_image.shape), "file:", Path(train_dataset.records[index].image_path)
    )
    print("bboxes:", tuple(bboxes.shape), "class ids:", tuple(cids.shape))
    # segm is a list of polygons which are arrays of points on the object boundary
    print("masks", polygon_shapes(train_segm))
    summary["sample"] = {
        "file": Path(train_dataset.records[index].image_path).name,
        "image": shape(train_image),
        "boxes": shape(bboxes),
        "polygons": [len(p) if not is_rle(p) else 0 for p in train_segm],
    }
    names = train_dataset.class_names
    ax = plot_bbox(train_image, bboxes, labels=cids, class_names=names)
    summary["pictures"] = [save_axes(ax, output / "train_sample_boxes.png")]
    # To actually see the object segmentation, we need to convert polygons to masks
    train_masks = to_bitmaps(train_label)
    plt_image = plot_mask(train_image, train_masks)
    ax = plot_bbox(plt_image, bboxes, labels=cids, class_names=names)
    summary["pictures"].append(save_axes(ax, output / "train_sample_masks.png"))
    summary["sample"]["mask_pixels"] = int(train_masks.sum())

    # Data transforms are identical to Faster R-CNN's, with the masks following the image.
    short, max_size = args.short, args.max_size  # the tutorial: 600, 1000
    train_transform = TrainTransform(short, max_size)
    val_transform = ValTransform(short, max_size)
    generator = torch.Generator().manual_seed(args.seed)  # the tutorial's utils.random.seed(233)
    train_image2, train_label2 = train_transform(train_image, train_label, generator=generator)
    # deviation from gluoncv: MaskRCNNDefaultTrainTransform rasterises every polygon into a
    # full-image bitmap; ours resizes and flips the polygons themselves (bitmaps are only made per
    # RoI for the mask targets, which saves memory at COCO scale); rasterised here to show them.
    train_masks2 = to_bitmaps(train_label2)
    print("tensor shape:", tuple(train_image2.shape))
    print("box and id shape:", tuple(train_label2.boxes.shape), tuple(train_label2.labels.shape))
    print("mask shape", tuple(train_masks2.shape))
    summary["transformed"] = {
        "image": shape(train_image2),
        "boxes": shape(train_label2.boxes),
        "masks": list(train_masks2.shape),
    }
    # deviation from gluoncv: the image is still uint8 (the model normalises): no conversion back.
    plt_image2 = plot_mask(train_image2, train_masks2)
    ax = plot_bbox(plt_image2, train_label2.boxes, labels=train_label2.labels, class_names=names)
    summary["pictures"].append(save_axes(ax, output / "train_transformed_masks.png"))
    return train_transform, val_transform


def data_loader_section(args, train_dataset, val_dataset, transforms, summary: dict) -> None:
    heading("Data Loader")
    train_dataset.transform, val_dataset.transform = transforms
    batch_size = 2  # for tutorial, we use smaller batch-size
    num_workers = args.num_workers
    # deviation from gluoncv: lists of (image, Targets) as with Append(); masks stay polygons, so
    # "mask" shows the number of instance masks rather than an [N, H, W] array.
    train_loader = build_train_loader(
        train_dataset, batch_size=batch_size, num_workers=num_workers, seed=args.seed
    )
    val_loader = build_test_loader(val_dataset, batch_size=batch_size, num_workers=num_workers)
    summary["loader"] = []
    for ib, (images, targets) in enumerate(train_loader):
        if ib > 3:
            break
        for j, (image, target) in enumerate(zip(images, targets, strict=True)):
            print(f"data {j}:", tuple(image.shape), f"label {j}:", tuple(target.boxes.shape),
                  f"mask {j}:", len(target.masks))  # fmt: skip
            summary["loader"].append(
                {"image": shape(image), "boxes": shape(target.boxes), "masks": len(target.masks)}
            )
    print("validation batches:", len(val_loader))
    summary["val_batches"] = len(val_loader)


def network_section(args, class_names, summary: dict):
    heading("Mask RCNN Network")
    # pretrained_base=True loads local ImageNet weights (never downloads); the tutorial uses False
    net = get_network(args, class_names)  # rcnn.get_model(args.network, pretrained_base=...)
    print("network:", args.network)
    summary.update(network=args.network, arch=net.cfg.arch)
    # mask size M: FPN deconvolves its RoIAlign output (14 -> 28); C4 deconvolves res5's output,
    # which halves the box RoIAlign (14 -> 7 -> 14), as GluonCV's 14x14 masks
    cfg = net.cfg
    pooled = (
        cfg.box_head.pooler_resolution // 2 if cfg.arch == "c4" else cfg.mask_head.pooler_resolution
    )
    summary["mask_size"] = 2 * pooled
    summary["model_lines"] = print_model(net, args.model_lines)

    # Mask-RCNN has identical inputs but produces an additional output, masks.
    # deviation from gluoncv: one Detections per raw image, masks bool [N, H, W] pasted at the
    # image's full resolution (GluonCV: [N, 14, 14] probabilities to paste yourself).
    x = torch.zeros((3, 600, 800), dtype=torch.uint8)
    net.eval()
    (det,) = net([x])
    print("cids:", tuple(det.labels.shape), "scores:", tuple(det.scores.shape),
          "bboxes:", tuple(det.boxes.shape), "masks:", tuple(det.masks.shape))  # fmt: skip
    summary["inference"] = {k: shape(getattr(det, k)) for k in ("labels", "scores", "boxes")}
    summary["inference"]["masks"] = shape(det.masks)

    # During training the ground truth (here one empty box, as in the tutorial) is needed.
    # deviation from gluoncv: train-mode images are already resized by the train transform, and
    # the targets carry the masks (a degenerate polygon for this empty box).
    net.train()
    x = torch.zeros((3, *resized_size(600, 800, args.short, args.max_size)), dtype=torch.uint8)
    size = tuple(x.shape[-2:])
    targets = Targets(torch.zeros((1, 4)), torch.zeros((1,), dtype=torch.int64),
                      torch.zeros(1, dtype=torch.bool), image_id=0, image_size=size,
                      orig_size=size, masks=[[np.zeros(6)]])  # fmt: skip
    print("data:", tuple(x.shape))
    summary["train_mode_image"] = shape(x)
    _, intermediates = net([x], [targets], return_intermediates=True)
    print_intermediates(intermediates, summary)
    return net


# GluonCV's train-mode outputs -> the keys of our intermediates (see train_faster_rcnn_voc.py)
GLUONCV_NAMES = {
    "cls_preds": "rcnn_cls_logits",
    "box_preds": "rcnn_box_deltas",
    "mask_preds": None,  # not returned by our model (see the report / examples/README.md)
    "roi": "rois",
    "samples": "rcnn_cls_targets",
    "matches": "matched_gt",
    "rpn_score": "rpn_logits",
    "rpn_box": "rpn_deltas",
    "anchors": "anchors",
}


def print_intermediates(intermediates: dict, summary: dict) -> None:
    summary["train_mode"] = {}
    for gluoncv_name, ours in GLUONCV_NAMES.items():
        if ours is None:
            print(f"{gluoncv_name:>10} -> (not returned: the mask loss is computed in the model)")
            continue
        value = intermediates[ours]
        print(f"{gluoncv_name:>10} -> {ours:<16}", shape(value))
        summary["train_mode"][ours] = shape(value)


def losses_section() -> None:
    heading("Training losses")
    # deviation from gluoncv: the losses are pure functions next to their heads, applied by the
    # model in train mode; Mask R-CNN adds the per-pixel sigmoid BCE on the GT class's mask.
    for name, fn in (("rpn_cls_loss, rpn_box_loss", rpn_losses),
                     ("rcnn_cls_loss, rcnn_box_loss", box_losses),
                     ("rcnn_mask_loss", mask_loss)):  # fmt: skip
        print(f"{name}: {fn.__module__}.{fn.__name__}")


def targets_section(args, net, train_dataset, summary: dict):
    heading("Training targets")
    # We also push RPN targets computation to CPU workers: GluonCV passes the network to the
    # transform; ours wraps the train transform (net.rpn_target_transform).
    # deviation from gluoncv: the RCNN and mask targets come back as intermediates of the
    # forward pass instead of ``net.target_generator`` / ``net.mask_target`` calls.
    train_dataset.transform = net.rpn_target_transform(TrainTransform(args.short, args.max_size))
    batch_size = 1  # for the next part, we only use batch size 1
    train_loader = build_train_loader(
        train_dataset, batch_size=batch_size, num_workers=args.num_workers, seed=args.seed
    )
    batches = iter(train_loader)
    images, targets = next(batches)
    rpn = targets[0].rpn_targets
    with torch.no_grad():
        _, inter = net(images, targets, return_intermediates=True)
    summary["rpn_targets_used"] = torch.equal(inter["rpn_labels"][0], rpn.labels)
    rows = {
        "data": images[0],
        "box": targets[0].boxes,
        "label": targets[0].labels,
        "rpn cls label": rpn.labels,  # -1 marks ignored label
        "rpn box label": rpn.box_targets,
        "rpn box mask": rpn.box_weights,  # mask out ignored box label
        "rcnn cls label": inter["rcnn_cls_targets"],  # rcnn does not have ignored label
        "rcnn box label": inter["rcnn_box_targets"],
        "rcnn box mask": inter["rcnn_box_weights"],
        # deviation from gluoncv: mask targets only for the positive RoIs, on their GT class
        # ([P, M, M]), so no "rcnn mask mask" over all RoIs and classes is needed
        "rcnn mask label": inter["mask_targets"],
    }
    summary["targets"] = {}
    for name, value in rows.items():
        print(f"{name}:", tuple(value.shape))
        summary["targets"][name] = shape(value)
    summary["rcnn_num_pos"] = int((inter["rcnn_cls_targets"] > 0).sum())
    summary["padded_size"] = [int(-(-s // 32) * 32) for s in images[0].shape[-2:]]
    print("the model used the loader's RPN targets:", summary["rpn_targets_used"])
    summary["mask_target_values"] = sorted({float(v) for v in inter["mask_targets"].unique()})
    return batches


def recompute_losses(net, inter: dict) -> dict[str, float]:
    """RPN and RCNN losses recomputed from the intermediates, as the tutorial's loop does."""
    rpn = rpn_losses(inter["rpn_logits"], inter["rpn_deltas"], inter["rpn_labels"],
                     box_targets=inter["rpn_box_targets"],
                     beta=net.cfg.rpn.smooth_l1_beta)  # fmt: skip
    rcnn = box_losses(inter["rcnn_cls_logits"], inter["rcnn_box_deltas"],
                      inter["rcnn_cls_targets"], box_targets=inter["rcnn_box_targets"],
                      beta=net.cfg.box_head.smooth_l1_beta)  # fmt: skip
    return {k: float(v.detach()) for k, v in {**rpn, **rcnn}.items() if k.startswith("loss_")}


def training_loop_section(args, net, batches, summary: dict) -> None:
    heading("Training loop")
    batch_size = 1
    optimizer = build_optimizer(
        net, lr=LR_PER_IMAGE * batch_size, momentum=MOMENTUM, wd=WD, wd_bias_norm=False
    )
    scheduler = WarmupScheduler(optimizer, max_iters=max(args.steps, 1),
                                warmup_iters=max(8000 // batch_size, 1000),
                                warmup_factor=WARMUP_FACTOR)  # fmt: skip
    before = {name: p.detach().clone() for name, p in net.named_parameters() if p.requires_grad}
    summary["steps"] = []
    for step in range(args.steps):
        images, targets = next(batches)
        torch.manual_seed(args.seed + step)
        losses, inter = net(images, targets, return_intermediates=True)
        by_hand = recompute_losses(net, inter)
        loss = total_loss(losses)
        optimizer.zero_grad()
        loss.backward()  # GluonCV: autograd.backward([rpn_loss1, ..., mask_loss])
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()  # GluonCV: trainer.step(batch_size)
        scheduler.step()
        values = scalars(losses)
        same = all(abs(by_hand[k] - values[k]) <= 1e-5 * max(1.0, abs(values[k])) for k in by_hand)
        text = ", ".join(f"{k}={v:.4f}" for k, v in values.items() if k.startswith("loss_"))
        print(f"step {step + 1}: lr={lr:.6f} loss={float(loss.detach()):.4f} ({text}); "
              f"by hand equal: {same}")  # fmt: skip
        summary["steps"].append(
            {"loss": float(loss.detach()), "lr": lr, **values, "by_hand_equal": same}
        )
    changed = sum(int(not torch.equal(p.detach(), before[n])) for n, p in net.named_parameters()
                  if n in before)  # fmt: skip
    print(f"parameter tensors updated: {changed} of {len(before)}")
    summary["params_updated"], summary["params_trainable"] = changed, len(before)
    torch.manual_seed(args.seed + args.steps - 1)
    with torch.no_grad():
        after = float(total_loss(net(images, targets)))
    print(f"loss on the last batch after {args.steps} step(s): {after:.4f}")
    summary["loss_after"] = after
    summary["losses_finite"] = all(all_finite(s) for s in summary["steps"])


def main() -> None:
    args = parse_args(
        "GluonCV's 'Train Mask RCNN end-to-end on MS COCO' tutorial with rcnn",
        network="mask_rcnn_resnet50_v1b_coco",
        fallback="mask_rcnn_fpn_resnet50_v1b_coco",
        data="coco",
    )
    torch.manual_seed(args.seed)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    train_dataset, val_dataset = dataset_section(args, summary)
    transforms = data_transform_section(args, train_dataset, output, summary)
    data_loader_section(args, train_dataset, val_dataset, transforms, summary)
    net = network_section(args, train_dataset.class_names, summary)
    losses_section()
    batches = targets_section(args, net, train_dataset, summary)
    training_loop_section(args, net, batches, summary)
    write_summary(output, summary)


if __name__ == "__main__":
    run(main)
