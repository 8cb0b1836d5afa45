"""Model labels renumbered into a dataset's classes by name (``rcnn.engine.relabel``)."""

from __future__ import annotations

import pytest
import torch

from rcnn.engine.relabel import DatasetLabels, dataset_label_index, on_dataset_labels
from rcnn.errors import UserError
from rcnn.structures import Detections


class FixedModel(torch.nn.Module):
    """Returns the same detections for every image: labels 0..3, one each."""

    class_names = ("N/A 12", "hazelnut", "fig", "date")
    has_mask = True

    def forward(self, images):
        masks = torch.zeros(4, 5, 6, dtype=torch.bool)
        for k in range(4):
            masks[k, k, k] = True
        boxes = torch.arange(16, dtype=torch.float32).reshape(4, 4)
        scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
        return [Detections(boxes, scores, torch.tensor([0, 1, 2, 3]), masks) for _ in images]


def test_label_index_by_name():
    dataset = ["date", "fig", "hazelnut"]
    assert dataset_label_index(FixedModel.class_names, dataset) == [-1, 2, 1, 0]
    assert dataset_label_index(dataset, dataset) is None
    with pytest.raises(UserError, match=r"ckpt\.pt: the model does not know 1 .* \(walnut\)"):
        dataset_label_index(FixedModel.class_names, [*dataset, "walnut"], source="ckpt.pt")


def test_detections_renumbered_and_others_dropped_and_counted():
    model = on_dataset_labels(FixedModel(), ["date", "fig", "hazelnut"], source="m")
    assert isinstance(model, DatasetLabels) and model.class_names == ["date", "fig", "hazelnut"]
    out = model([torch.zeros(3, 5, 6), torch.zeros(3, 5, 6)])
    for dets in out:
        assert dets.labels.tolist() == [2, 1, 0]  # hazelnut, fig, date in the dataset's numbers
        assert dets.scores.tolist() == pytest.approx([0.8, 0.7, 0.6])
        assert dets.boxes[:, 0].tolist() == [4.0, 8.0, 12.0]
        assert [int(m.nonzero()[0, 0]) for m in dets.masks] == [1, 2, 3]
    assert model.dropped == 2  # one "N/A 12" per image
    same = FixedModel()
    assert on_dataset_labels(same, FixedModel.class_names) is same
