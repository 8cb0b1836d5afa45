"""06. Train Faster-RCNN end-to-end on PASCAL VOC -- GluonCV's tutorial with rcnn's API.

The sections and their order follow the GluonCV tutorial (seed 001); each step prints what the
tutorial prints. Where rcnn does something differently from GluonCV, a ``# deviation from gluoncv``
comment says what and why.

Run it on the real VOC (``~/.cache/rcnn/datasets/voc/VOCdevkit/VOC2007``, ``VOC2012``)::

    python examples/train_faster_rcnn_voc.py

or, in seconds, on any VOC-style folder (xml + images), e.g. the raccoon sample::

    python examples/train_faster_rcnn_voc.py --data-root ../shared/data/raccoon \
        --short 128 --max-size 192 --backbone resnet18 --rois 32 --no-pretrained-base \
        --model-lines 20 --output /tmp/voc_tutorial
"""

from __future__ import annotations

from pathlib import Path

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
from rcnn.data.loader import build_test_loader, build_train_loader
from rcnn.data.transforms import resized_size
from rcnn.engine.optim import build_optimizer
from rcnn.models.box_head import box_losses
from rcnn.models.rpn import rpn_losses
from rcnn.structures import Targets
from rcnn.visualize import plot_bbox

# GluonCV's train_faster_rcnn.py for VOC: lr 0.001, wd 5e-4, momentum 0.9 (weight decay on all
# parameters, biases included)
LR, WD, MOMENTUM = 0.001, 5e-4, 0.9


def dataset_section(args, summary: dict):
    heading("Dataset")
    # typically we use 2007+2012 trainval splits for training data and 2007 test as validation:
    # build_dataset("voc", ...) reads exactly those; a folder path reads a custom VOC-style folder
    # (its own train/val split lists, or a hold-out split).
    spec = args.data_root or "voc"
    train_dataset = build_dataset(spec, "train")
    val_dataset = build_dataset(spec, "val")
    print("Training images:", len(train_dataset))
    print("Validation images:", len(val_dataset))
    summary.update(num_train=len(train_dataset), num_val=len(val_dataset))
    summary["class_names"] = train_dataset.class_names
    return train_dataset, val_dataset


def data_transform_section(args, train_dataset, val_dataset, output: Path, summary: dict):
    heading("Data transform")
    index = 6 % len(train_dataset)
    # deviation from gluoncv: a sample is (uint8 image [3, H, W], Targets) instead of
    # (HWC image, label [N, 6] = box, class id, difficult); boxes, labels and the difficult
    # flags (``ignore``) are separate tensors.
    train_image, train_label = train_dataset[index]
    bboxes, cids = train_label.boxes, train_label.labels
    print(
        "image:", tuple(train_image.shape), "file:", Path(train_dataset.records[index].image_path)
    )
    print("bboxes:", tuple(bboxes.shape), "class ids:", tuple(cids.shape))
    summary["sample"] = {
        "file": Path(train_dataset.records[index].image_path).name,
        "image": shape(train_image),
        "boxes": shape(bboxes),
        "labels": shape(cids),
    }
    # Plot the image, together with the bounding box labels
    ax = plot_bbox(train_image, bboxes, labels=cids, class_names=train_dataset.class_names)
    summary["pictures"] = [save_axes(ax, output / "train_sample.png")]
    # Validation images are quite similar to training
    val_image, val_label = val_dataset[0]
    ax = plot_bbox(val_image, val_label.boxes, labels=val_label.labels,
                   class_names=val_dataset.class_names)  # fmt: skip
    summary["pictures"].append(save_axes(ax, output / "val_sample.png"))

    # For Faster-RCNN networks, the only data augmentation is horizontal flip.
    short, max_size = args.short, args.max_size  # the tutorial: 600, 1000
    train_transform = TrainTransform(short, max_size)
    val_transform = ValTransform(short, max_size)
    # deviation from gluoncv: no global ``utils.random.seed(233)``; a transform draws its
    # randomness from the generator it is given (the loader gives each sample its own).
    generator = torch.Generator().manual_seed(args.seed)
    train_image2, train_label2 = train_transform(train_image, train_label, generator=generator)
    print("tensor shape:", tuple(train_image2.shape))
    print("box shape:", tuple(train_label2.boxes.shape), "id shape:",
          tuple(train_label2.labels.shape), "flipped:", train_label2.flipped)  # fmt: skip
    summary["transformed"] = {
        "image": shape(train_image2),
        "boxes": shape(train_label2.boxes),
        "flipped": train_label2.flipped,
    }
    # deviation from gluoncv: the transformed image is still uint8 in (0, 255) (the model
    # normalises it on its device), so there is nothing to convert back before plotting.
    ax = plot_bbox(train_image2, train_label2.boxes, labels=train_label2.labels,
                   class_names=train_dataset.class_names)  # fmt: skip
    summary["pictures"].append(save_axes(ax, output / "train_transformed.png"))
    return train_transform, val_transform


def data_loader_section(args, train_dataset, val_dataset, transforms, summary: dict) -> None:
    heading("Data Loader")
    train_transform, val_transform = transforms
    batch_size = 2  # for tutorial, we use smaller batch-size
    num_workers = args.num_workers
    # GluonCV's ``dataset.transform(fn)``: our datasets apply their ``transform`` attribute
    train_dataset.transform = train_transform
    val_dataset.transform = val_transform
    # deviation from gluoncv: the collate keeps lists (as ``Append()`` does) and the train loader
    # is infinite (GluonCV: last_batch='rollover'), reshuffled per epoch from the seed and grouping
    # landscape / portrait images into separate batches.
    train_loader = build_train_loader(
        train_dataset, batch_size=batch_size, num_workers=num_workers, seed=args.seed
    )
    val_loader = build_test_loader(val_dataset, batch_size=batch_size, num_workers=num_workers)
    summary["loader"] = []
    for ib, (images, targets) in enumerate(train_loader):
        if ib > 3:
            break
        for j in range(len(images)):
            print(
                f"data {j}:", tuple(images[j].shape), f"label {j}:", tuple(targets[j].boxes.shape)
            )
            summary["loader"].append({"image": shape(images[j]), "boxes": shape(targets[j].boxes)})
    print("validation batches:", len(val_loader))
    summary["val_batches"] = len(val_loader)


def network_section(args, class_names, summary: dict):
    heading("Faster-RCNN Network")
    # To avoid random weights in the body, load ImageNet weights (pretrained_base=True: a local
    # file, nothing is downloaded); --no-pretrained-base keeps the random init of the tutorial.
    net = get_network(args, class_names)  # rcnn.get_model(args.network, pretrained_base=...)
    print("network:", args.network)
    summary["network"] = args.network
    summary["arch"] = net.cfg.arch
    summary["model_lines"] = print_model(net, args.model_lines)

    # Faster-RCNN network is callable with an image tensor.
    # deviation from gluoncv: eval mode takes raw uint8 images of any size and resizes and
    # normalises them itself; it returns one Detections (boxes, scores, labels) per image, in the
    # image's own coordinates, instead of (cids, scores, bboxes) arrays padded with -1.
    x = torch.zeros((3, 600, 800), dtype=torch.uint8)
    net.eval()
    (detections,) = net([x])
    cids, scores, bboxes = detections.labels, detections.scores, detections.boxes
    print(
        "cids:", tuple(cids.shape), "scores:", tuple(scores.shape), "bboxes:", tuple(bboxes.shape)
    )
    summary["inference"] = {"labels": shape(cids), "scores": shape(scores), "boxes": shape(bboxes)}

    # Faster-RCNN network behaves differently during training mode: this time we need ground
    # truth to generate high quality RoI proposals during training.
    # deviation from gluoncv: train mode takes images the train transform already resized, so the
    # zero image is made at the transform's size for 600x800 ((600, 800) with the defaults).
    net.train()
    x = torch.zeros((3, *resized_size(600, 800, args.short, args.max_size)), dtype=torch.uint8)
    gt_box = torch.zeros((1, 4))
    gt_label = torch.zeros((1,), dtype=torch.int64)
    size = tuple(x.shape[-2:])
    targets = Targets(gt_box, gt_label, torch.zeros(1, dtype=torch.bool), image_id=0,
                      image_size=size, orig_size=size)  # fmt: skip
    print("data:", tuple(x.shape))
    summary["train_mode_image"] = shape(x)
    _, intermediates = net([x], [targets], return_intermediates=True)
    print_intermediates(intermediates, summary)
    return net


# GluonCV's train-mode outputs -> the keys of our intermediates (one image here, so B = 1)
GLUONCV_NAMES = {
    "cls_pred": "rcnn_cls_logits",  # [R, C+1] (GluonCV [B, R, C+1])
    "box_pred": "rcnn_box_deltas",  # [R, 4C]
    "roi": "rois",  # one [R_i, 4] per image: the sampled proposals
    "samples": "rcnn_cls_targets",  # GluonCV's +1/0/-1 sample flags: our targets' > 0
    "matches": "matched_gt",  # one [R_i] per image
    "rpn_score": "rpn_logits",  # [B, N]
    "rpn_box": "rpn_deltas",  # [B, N, 4]
    "anchors": "anchors",  # [N, 4] for the padded batch
    "cls_targets": "rcnn_cls_targets",  # [R], 0 = background, c+1 = class c
    "box_targets": "rcnn_box_targets",  # [R, 4] (GluonCV: [B, R_pos, C, 4])
    "box_masks": "rcnn_box_weights",  # [R, 4]
}


def print_intermediates(intermediates: dict, summary: dict) -> None:
    """Each GluonCV train-mode output with our name and shape."""
    summary["train_mode"] = {}
    for gluoncv_name, ours in GLUONCV_NAMES.items():
        value = intermediates[ours]
        print(f"{gluoncv_name:>12} -> {ours:<17}", shape(value))
        summary["train_mode"][ours] = shape(value)
    proposals = intermediates["proposals"]
    print(f"{'(proposals)':>12} -> {'proposals':<17}", [len(p) for p in proposals])


def losses_section() -> None:
    heading("Training losses")
    # deviation from gluoncv: the four losses are pure functions next to their heads, with
    # GluonCV's normalisers, and the model applies them in train mode:
    #   rpn_cls_loss  = sigmoid BCE over sampled anchors / #sampled   (rpn_losses)
    #   rpn_box_loss  = smooth L1 (beta 1/9) on positives / #sampled  (rpn_losses)
    #   rcnn_cls_loss = softmax CE over sampled RoIs / #RoIs         (box_losses)
    #   rcnn_box_loss = smooth L1 on positives' GT-class deltas / #RoIs (box_losses)
    for name, fn in (("rpn_cls_loss, rpn_box_loss", rpn_losses),
                     ("rcnn_cls_loss, rcnn_box_loss", box_losses)):  # fmt: skip
        print(f"{name}: {fn.__module__}.{fn.__name__}")


def recompute_losses(net, inter: dict) -> dict[str, float]:
    """The four losses recomputed from the intermediates, as the tutorial's loop does by hand."""
    rpn = rpn_losses(inter["rpn_logits"], inter["rpn_deltas"], inter["rpn_labels"],
                     box_targets=inter["rpn_box_targets"],
                     beta=net.cfg.rpn.smooth_l1_beta)  # fmt: skip
    rcnn = box_losses(inter["rcnn_cls_logits"], inter["rcnn_box_deltas"],
                      inter["rcnn_cls_targets"], box_targets=inter["rcnn_box_targets"],
                      beta=net.cfg.box_head.smooth_l1_beta)  # fmt: skip
    return {k: float(v.detach()) for k, v in {**rpn, **rcnn}.items() if k.startswith("loss_")}


def targets_sections(args, net, train_dataset, summary: dict):
    heading("RPN training targets")
    # To speed up training, the CPU workers pre-compute the RPN targets: GluonCV passes the
    # network to its train transform; ours wraps the train transform with the network's
    # rpn_target_transform (same anchors, same RPNTargetGenerator as the model) and attaches
    # Targets.rpn_targets.
    train_dataset.transform = net.rpn_target_transform(TrainTransform(args.short, args.max_size))
    batch_size = 1  # for the next part, we only use batch size 1
    train_loader = build_train_loader(
        train_dataset, batch_size=batch_size, num_workers=args.num_workers, seed=args.seed
    )
    batches = iter(train_loader)
    images, targets = next(batches)
    rpn = targets[0].rpn_targets
    # deviation from gluoncv: one image's targets are [A] / [A, 4] (the loader keeps lists)
    rows = {
        "data": images[0],
        "box": targets[0].boxes,
        "label": targets[0].labels,
        "rpn cls label": rpn.labels,  # -1 marks ignored label
        "rpn box label": rpn.box_targets,
        "rpn box mask": rpn.box_weights,  # mask out ignored box label
    }
    print_rows(rows, summary, "rpn_targets")
    heading("RCNN training targets")
    # RCNN targets are generated from the intermediate outputs (proposals, matches) in train mode
    with torch.no_grad():
        _, inter = net(images, targets, return_intermediates=True)
    used = torch.equal(inter["rpn_labels"][0], rpn.labels.to(inter["rpn_labels"].device))
    print("the model used the loader's RPN targets:", used)
    rows = {
        "data": images[0],
        "box": targets[0].boxes,
        "label": targets[0].labels,
        "rcnn cls label": inter["rcnn_cls_targets"],  # rcnn does not have ignored label
        "rcnn box label": inter["rcnn_box_targets"],
        "rcnn box mask": inter["rcnn_box_weights"],
    }
    print_rows(rows, summary, "rcnn_targets")
    summary["rpn_targets_used"] = used
    summary["rcnn_num_pos"] = int((inter["rcnn_cls_targets"] > 0).sum())
    summary["padded_size"] = [int(-(-s // 32) * 32) for s in images[0].shape[-2:]]
    return batches


def print_rows(rows: dict, summary: dict, key: str) -> None:
    summary[key] = {}
    for name, value in rows.items():
        print(f"{name}:", tuple(value.shape))
        summary[key][name] = shape(value)


def training_loop_section(args, net, batches, summary: dict) -> None:
    heading("Training loop")
    optimizer = build_optimizer(net, lr=LR, momentum=MOMENTUM, wd=WD)
    before = {name: p.detach().clone() for name, p in net.named_parameters() if p.requires_grad}
    summary["steps"] = []
    for step in range(args.steps):
        images, targets = next(batches)
        torch.manual_seed(args.seed + step)  # the same RPN / RoI sampling stream below
        losses, inter = net(images, targets, return_intermediates=True)
        by_hand = recompute_losses(net, inter)
        loss = total_loss(losses)
        optimizer.zero_grad()
        loss.backward()  # GluonCV: autograd.backward([rpn_loss1, rpn_loss2, ...])
        optimizer.step()  # GluonCV: trainer.step(batch_size)
        values = scalars(losses)
        same = all(abs(by_hand[k] - values[k]) <= 1e-5 * max(1.0, abs(values[k])) for k in by_hand)
        text = ", ".join(f"{k}={v:.4f}" for k, v in values.items() if k.startswith("loss_"))
        print(f"step {step + 1}: loss={float(loss.detach()):.4f} ({text}); by hand equal: {same}")
        summary["steps"].append({"loss": float(loss.detach()), **values, "by_hand_equal": same})
    changed = sum(
        int(not torch.equal(p.detach(), before[n]))
        for n, p in net.named_parameters()
        if n in before
    )
    print(f"parameter tensors updated: {changed} of {len(before)}")
    torch.manual_seed(args.seed + args.steps - 1)
    with torch.no_grad():
        after = float(total_loss(net(images, targets)))
    print(f"loss on the last batch after {args.steps} step(s): {after:.4f}")
    summary["loss_after"] = after
    summary["params_updated"], summary["params_trainable"] = changed, len(before)
    summary["losses_finite"] = all(all_finite(s) for s in summary["steps"])


def main() -> None:
    args = parse_args(
        "GluonCV's 'Train Faster-RCNN end-to-end on PASCAL VOC' tutorial with rcnn",
        network="faster_rcnn_resnet50_v1b_voc",
        fallback="faster_rcnn_fpn_resnet50_v1b_coco",
        data="voc",
    )
    torch.manual_seed(args.seed)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    train_dataset, val_dataset = dataset_section(args, summary)
    transforms = data_transform_section(args, train_dataset, val_dataset, output, summary)
    data_loader_section(args, train_dataset, val_dataset, transforms, summary)
    net = network_section(args, train_dataset.class_names, summary)
    losses_section()
    batches = targets_sections(args, net, train_dataset, summary)
    training_loop_section(args, net, batches, summary)
    write_summary(output, summary)


if __name__ == "__main__":
    run(main)
