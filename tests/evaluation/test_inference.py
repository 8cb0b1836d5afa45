"""predict_dataset: eval + inference mode, batching, CPU outputs, order, 2-process gloo gather."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcnn.engine.inference import predict_dataset
from rcnn.evaluation import VOCEvaluator
from rcnn.structures import Detections, Record, Targets


class FakeDataset(torch.utils.data.Dataset):
    """Images of different sizes whose pixels encode their index; ids 100 + index."""

    def __init__(self, n: int = 5) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        h, w = 20 + 3 * i, 30 + i
        image = torch.full((3, h, w), 10 * i, dtype=torch.uint8)
        empty = torch.zeros(0, 4)
        targets = Targets(
            empty, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool),
            image_id=100 + i, image_size=(h, w), orig_size=(h, w),
        )  # fmt: skip
        return image, targets


class FakeModel(torch.nn.Module):
    """One whole-image box per image, score = pixel value / 255; records how it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, images):
        self.calls.append((len(images), self.training, torch.is_inference_mode_enabled()))
        out = []
        for image in images:
            h, w = image.shape[-2:]
            out.append(
                Detections(
                    boxes=torch.tensor([[0.0, 0.0, w, h]]) * self.weight,
                    scores=image[:1, :1, 0].float().reshape(1) / 255,
                    labels=torch.zeros(1, dtype=torch.int64),
                    masks=torch.ones(1, h, w, dtype=torch.bool),
                )
            )
        return out


def fake_records(n: int = 5) -> list[Record]:
    """Ground truth: one whole-image box per image, so every fake detection is a hit."""
    return [
        Record(
            image_path="",
            image_id=100 + i,
            height=20 + 3 * i,
            width=30 + i,
            boxes=np.array([[0, 0, 30 + i, 20 + 3 * i]], dtype=np.float32),
            labels=np.zeros(1, dtype=np.int64),
            ignore=np.zeros(1, dtype=bool),
        )
        for i in range(n)
    ]


def check_outputs(outputs, n):
    assert [image_id for image_id, _ in outputs] == [100 + i for i in range(n)]
    for i, (_, dets) in enumerate(outputs):
        assert dets.boxes.tolist() == [[0.0, 0.0, 30.0 + i, 20.0 + 3 * i]]
        assert dets.scores.item() == pytest.approx(10 * i / 255)
        assert dets.boxes.device.type == "cpu"


def test_predict_dataset_batches_in_eval_and_inference_mode():
    model = FakeModel()
    model.train()
    outputs = predict_dataset(model, FakeDataset(5), batch_size=2)
    check_outputs(outputs, 5)
    assert model.calls == [(2, False, True), (2, False, True), (1, False, True)]
    assert model.training  # the former mode is restored
    assert outputs[0][1].masks.shape == (1, 20, 30)


def test_predict_dataset_into_evaluator_drops_masks():
    evaluator = VOCEvaluator(fake_records(), ["thing"])
    outputs = predict_dataset(FakeModel(), FakeDataset(5), batch_size=3, evaluator=evaluator)
    check_outputs(outputs, 5)
    assert all(dets.masks is None for _, dets in outputs)
    assert evaluator.evaluate()["voc12"]["mAP"] == 1.0


# The 2-process gloo run (sharding, gather on rank 0, evaluator state merge) is in
# tests/cli/test_eval_cli.py::test_distributed_predict_and_eval, one spawn for both.
