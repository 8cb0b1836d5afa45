"""``rcnn.models.rcnn.pad_batch``: zero padding to a multiple of the size divisibility."""

from __future__ import annotations

import torch

from rcnn.models.rcnn import pad_batch


def test_pad_batch_pads_each_image_at_its_top_left():
    first = torch.full((3, 2, 3), 1.0)
    second = torch.full((3, 4, 1), 2.0)
    batch = pad_batch([first, second], 4)
    assert batch.tensor.shape == (2, 3, 4, 4)  # max (4, 3), rounded up to multiples of 4
    assert batch.image_sizes == [(2, 3), (4, 1)]
    expected = torch.zeros(2, 3, 4, 4)
    expected[0, :, :2, :3] = 1.0
    expected[1, :, :4, :1] = 2.0
    assert torch.equal(batch.tensor, expected)
    assert pad_batch([first, second], 1).tensor.shape == (2, 3, 4, 3)
    assert pad_batch([first], 32).tensor.shape == (1, 3, 32, 32)
    assert len(pad_batch([first], 32)) == 1
