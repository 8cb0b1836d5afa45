"""RoIAlign that uses every CPU thread, bit-identical to torchvision's (forward and backward).

torchvision's CPU kernel runs on one thread. Each output bin depends on one RoI and one channel,
so the forward splits the RoIs into one chunk per thread; the backward (a scatter-add into the
feature map's gradient) splits by image when the batch has several (each image's RoIs add into
its own slice in their original order), else by channel, so every gradient element receives the
same additions in the same order as in the single call. The kernel releases the GIL, so plain
Python threads run the chunks in parallel.

Shape shorthand: B images, D channels, H/W feature size, R RoIs, S output side.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

MIN_ROIS_PER_THREAD = 32
_POOL: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOL:
        _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="roi_align")
    return _POOL[workers]


def _run(fn, jobs: list) -> list:
    """``fn(*job)`` of every job, the first on this thread and the rest on the pool."""
    futures = [_pool(len(jobs) - 1).submit(_no_grad, fn, *job) for job in jobs[1:]]
    first = fn(*jobs[0])
    return [first] + [f.result() for f in futures]


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def _forward(feature: Tensor, rois: Tensor, size, scale: float, ratio: int, aligned: bool):
    return torch.ops.torchvision.roi_align(feature, rois, scale, size[0], size[1], ratio, aligned)


def _backward(grad: Tensor, rois: Tensor, shape, size, scale: float, ratio: int, aligned: bool):
    batch, channels, height, width = shape
    return torch.ops.torchvision._roi_align_backward(
        grad, rois, scale, size[0], size[1], batch, channels, height, width, ratio, aligned
    )


class _ParallelRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feature, rois, size, scale, ratio, aligned, workers):
        ctx.save_for_backward(rois)
        ctx.args = (tuple(feature.shape), size, scale, ratio, aligned, workers)
        chunks = rois.tensor_split(workers)
        outs = _run(_forward, [(feature, c, size, scale, ratio, aligned) for c in chunks])
        return torch.cat(outs)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        shape, size, scale, ratio, aligned, workers = ctx.args
        return (_parallel_backward(grad, rois, shape, size, scale, ratio, aligned, workers),) + (
            None,
        ) * 6


def _parallel_backward(grad, rois, shape, size, scale, ratio, aligned, workers) -> Tensor:
    """Gradient [B, D, H, W] of the feature map, split by image (B > 1) or by channel."""
    grad = grad.contiguous()
    batch, channels, height, width = shape
    if batch > 1:
        index = rois[:, 0].long()
        jobs = []
        for image in range(batch):
            rows = torch.where(index == image)[0]
            local = torch.cat([torch.zeros_like(rois[rows, :1]), rois[rows, 1:]], 1)
            shape_1 = (1, channels, height, width)
            jobs.append((grad[rows], local, shape_1, size, scale, ratio, aligned))
        return torch.cat(_run_batched(_backward, jobs, workers))
    bounds = torch.arange(channels).tensor_split(min(workers, channels))
    jobs = [
        (
            grad[:, b[0] : b[-1] + 1].contiguous(),
            rois,
            (batch, len(b), height, width),
            size,
            scale,
            ratio,
            aligned,
        )
        for b in bounds
    ]
    return torch.cat(_run(_backward, jobs), 1)


def _run_batched(fn, jobs: list, workers: int) -> list:
    """``_run`` in rounds of ``workers`` jobs."""
    out = []
    for start in range(0, len(jobs), workers):
        out += _run(fn, jobs[start : start + workers])
    return out


def roi_align(
    feature: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """``torchvision.ops.roi_align`` (rois [R, 5] with the batch index), multithreaded on CPU.

    Args:
        feature: [B, D, H, W]; rois: [R, 5] rows ``(image index, x1, y1, x2, y2)``.

    Returns:
        [R, D, S, S], bit-identical to torchvision's, as is the gradient of ``feature``.
    """
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    workers = min(torch.get_num_threads(), len(rois) // MIN_ROIS_PER_THREAD)
    if feature.device.type != "cpu" or workers < 2 or torch.jit.is_scripting():
        return tv_roi_align(feature, rois, size, spatial_scale, sampling_ratio, aligned)
    if feature.dtype != torch.float32:  # float32 CPU kernels; worker threads run without autocast
        pooled = roi_align(feature.float(), rois, size, spatial_scale, sampling_ratio, aligned)
        return pooled.to(feature.dtype)
    feature = feature.contiguous()
    rois = rois.to(feature.dtype)
    return _ParallelRoIAlign.apply(
        feature, rois, size, float(spatial_scale), int(sampling_ratio), bool(aligned), workers
    )
