"""Loaders: seeded, resumable, sharded, aspect-grouped, worker-independent, skipping bad images."""

from __future__ import annotations

import itertools

import pytest
import torch

from rcnn.data import TrainTransform, build_dataset, build_test_loader, build_train_loader
from rcnn.data.loader import TrainBatchSampler


def _batches(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_sampler_is_deterministic_resumable_and_grouped():
    ratios = [1.5, 0.5, 1.0, 0.7, 2.0, 0.6, 1.2, 0.9, 1.1, 0.8]
    sampler = TrainBatchSampler(ratios, 2, seed=5)
    batches = _batches(sampler, 12)
    assert batches == _batches(TrainBatchSampler(ratios, 2, seed=5), 12)
    assert batches != _batches(TrainBatchSampler(ratios, 2, seed=6), 12)
    assert _batches(TrainBatchSampler(ratios, 2, seed=5, start_iter=7), 5) == batches[7:]
    for batch in batches:
        assert len({ratios[i] >= 1 for i, _ in batch}) == 1
    # each epoch visits every image once (grouping may carry a leftover to the next epoch)
    first_epoch = [i for batch in batches[:5] for i, _ in batch]
    assert len(set(first_epoch)) >= 8


def test_sampler_shards_cover_the_epoch_disjointly():
    ratios = [1.0] * 10
    shards = [TrainBatchSampler(ratios, 1, seed=0, rank=r, world_size=3) for r in range(3)]
    epoch = [s.epoch_indices(0) for s in shards]
    assert all(len(e) == 4 for e in epoch)  # 10 padded to 12
    assert set(itertools.chain(*epoch)) == set(range(10))
    # only the 2 padding entries repeat images (as DistributedSampler pads)
    assert len(list(itertools.chain(*epoch))) - len(set(itertools.chain(*epoch))) == 2


@pytest.fixture
def tiny_dataset(tmp_path, files):
    images, annotations = [], []
    for index in range(6):
        size = (30, 40) if index % 2 else (40, 30)
        files.image(tmp_path / "images" / f"{index}.png", size, value=20 * index)
        images.append(
            {"id": index + 1, "file_name": f"{index}.png", "height": size[0], "width": size[1]}
        )
        annotations.append({"id": index + 1, "image_id": index + 1, "category_id": 1,
                            "bbox": [2, 3, 10, 12], "iscrowd": 0})  # fmt: skip
    return files.coco(tmp_path, images, annotations)


def test_train_loader_same_batches_with_and_without_workers(tiny_dataset):
    dataset = build_dataset(str(tiny_dataset), "train", transform=TrainTransform((20, 24), 64))
    plain = list(
        itertools.islice(iter(build_train_loader(dataset, batch_size=2, num_workers=0, seed=1)), 4)
    )
    workers = build_train_loader(dataset, batch_size=2, num_workers=2, seed=1)
    for (a_images, a_targets), (b_images, b_targets) in zip(
        plain, itertools.islice(iter(workers), 4), strict=True
    ):
        assert all(torch.equal(a, b) for a, b in zip(a_images, b_images, strict=True))
        assert [t.image_id for t in a_targets] == [t.image_id for t in b_targets]
        assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(a_targets, b_targets, strict=True))
        assert len({img.shape[1] >= img.shape[2] for img in a_images}) == 1


def test_unreadable_image_is_skipped_and_counted(tiny_dataset):
    (tiny_dataset.parent / "images" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dataset = build_dataset(str(tiny_dataset), "all")
    loader = build_test_loader(dataset, batch_size=2)
    seen = [t.image_id for _, targets in loader for t in targets]
    assert seen == [1, 2, 4, 5, 6] and loader.num_skipped == 1
    train = build_train_loader(dataset, batch_size=3, num_workers=0, seed=0)
    batches = list(itertools.islice(iter(train), 6))
    assert all(3 not in [t.image_id for t in b[1]] for b in batches)
    assert train.num_skipped >= 1


def test_test_loader_shards_in_order(tiny_dataset):
    dataset = build_dataset(str(tiny_dataset), "all")
    ranks = [
        [t.image_id for _, ts in build_test_loader(dataset, rank=r, world_size=2) for t in ts]
        for r in range(2)
    ]
    assert ranks == [[1, 3, 5], [2, 4, 6]]
