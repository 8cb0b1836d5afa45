"""``mask_rcnn_shapes``: the small Mask R-CNN that ``rcnn train`` (no arguments) trains on shapes.

The main job trains from scratch (no pretrained weights on the machine) on 2 CPU cores and must
reach box and mask AP@[.5:.95] >= 0.7 on held-out shapes images within 10 minutes of wall time,
data generation and evaluation included. torchvision's GPU-era recipe gets AP 0.000 in 8 minutes
there (``research/peers.md`` section 7): its 256-channel FPN, RPN and 4-conv mask head, 2000
proposals and 512 RoIs per image cost seconds per iteration. Every number below was chosen for
128 px images with 1-4 objects of 19-64 px on that CPU.

Measured (``rcnn train``, 2000 train / 100 held-out val images, 800 steps of 8 images, shared
2-core CPU, so wall times include other jobs' load; AP@[.5:.95] box / mask):

- this preset: 0.818 / 0.771, 571 s for training + evaluation + picture (2 threads, load ~4);
- the same with 2 RoIAlign samples per bin: 0.804 / 0.771 (1 thread, heavy load);
  with ``aligned=True``: 0.801 / 0.768; ResNet-18's 2 blocks per stage at width 16: 0.788 / 0.739.

Where a step's time goes: the backward of the convolutions (~40%, mostly the mask head on
~16 positive RoIs per image) and of RoIAlign (single-threaded).
"""

from __future__ import annotations

from rcnn.models.config import ModelConfig

SHAPES_CLASSES = ("square", "circle", "triangle")
IMAGE_SIZE = 128
NUM_TRAIN = 2000
BATCH_SIZE = 8
MAX_ITERS = 800

SHAPES_RECIPE = {
    # SGD + linear warm-up + cosine decay to 0; 3.2 epochs of 2000 images = 800 steps of 8 images
    "batch_size": BATCH_SIZE,
    "epochs": MAX_ITERS * BATCH_SIZE / NUM_TRAIN,
    "lr": 0.02,
    "lr_schedule": "cosine",
    "lr_warmup": 50,
    "lr_warmup_factor": 1.0 / 3,
    "wd": 1e-4,
    "momentum": 0.9,
    # 2 cores: the loader works in the main process; no evaluation or checkpoint mid-run
    "num_workers": 0,
    "val_interval": "0",
    "save_interval": "0",
    "log_interval": 50,
    "dataset_options": {"num_train": NUM_TRAIN, "num_val": 100, "image_size": IMAGE_SIZE},
}


def shapes_model() -> ModelConfig:
    """The model config of ``mask_rcnn_shapes`` (3 classes, 128 px, from scratch)."""
    cfg = ModelConfig(arch="fpn", classes=SHAPES_CLASSES, mask_on=True)
    inp = cfg.input
    inp.train_short, inp.test_short, inp.max_size = (IMAGE_SIZE,), IMAGE_SIZE, IMAGE_SIZE
    # random colours: centre [0, 1] pixels on 0.5 with unit-ish spread (no ImageNet statistics)
    inp.pixel_mean, inp.pixel_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    body = cfg.backbone
    body.name, body.width = "resnet10", 16  # 1 BasicBlock per stage, channels 16/32/64/128
    body.norm, body.freeze_at, body.pretrained_base = "bn", 0, False  # trainable BN from scratch
    cfg.fpn.out_channels = 64
    # one anchor size per level P2..P6 at 3 aspect ratios; objects are 19-64 px
    cfg.anchors.sizes = ((16,), (32,), (64,), (128,), (256,))
    cfg.anchors.aspect_ratios = (0.5, 1.0, 2.0)
    rpn = cfg.rpn
    rpn.pre_nms_topk, rpn.post_nms_topk = (200, 100), (100, 50)  # (train, test)
    rpn.batch_size_per_image = 128
    box = cfg.box_head
    box.kind, box.fc_dim = "2fc", 256
    # one bilinear sample per RoIAlign bin: the backward of RoIAlign is single-threaded on the CPU
    # and 4 samples per bin cost ~14% of a step with the same AP
    box.sampling_ratio = 1
    box.batch_size_per_image, box.positive_fraction = 64, 0.25
    box.score_thresh, box.detections_per_img = 0.01, 20
    mask = cfg.mask_head
    mask.pooler_resolution, mask.num_conv, mask.conv_dim = 14, 2, 64  # 28 x 28 masks
    mask.sampling_ratio = 1
    return cfg
