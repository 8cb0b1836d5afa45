"""RoIAlign that uses every CPU thread; torchvision's results (forward and backward).

torchvision's CPU kernel runs on one thread. Each output bin depends on one RoI and one channel,
so the forward splits the RoIs into one chunk per thread and runs torchvision's kernel on each:
the same bits as one call, on every processor. The kernel releases the GIL, so plain Python
threads run the chunks in parallel.

The backward (a scatter-add into the feature map's gradient) is, where a self-check shows it
exact, one sparse-dense product: ``grad_feature[b, :, y, x] = sum over samples w *
grad_out[roi, :, bin]``, with the sparse matrix's entries of each feature pixel in torchvision's
order (RoI, bin row, bin column, sample row, sample column, corner) and its weights computed by
torchvision's own float steps (``_bilinear_entries``); the per-sample ``w / count`` is exact when
count (sampling_ratio squared) is a power of two. Whether the CSR x dense product then adds each
row's entries one after the other from 0, as torchvision's loop does, depends on the build and
the processor: on AMD Zen 3 (AVX2) it does (the same bits, 5-13x faster than torchvision's
kernel at the presets' sizes, ``benchmarks/roi_align_backward.py``); on Intel Sapphire Rapids
(AVX-512, AMX) it does not. A self-check against torchvision's kernel on first use
(``sparse_backward_is_exact``, run outside autocast in float32) decides; where it fails, and for
other ratios (the adaptive 0, whose per-RoI count is not a power of two), the backward runs
torchvision's kernel split by image (B > 1) or by channel, again in the original order for every
element: torchvision's bits on every processor.

Shape shorthand: B images, D channels, H/W feature size, R RoIs, S output side, g samples per bin
side (``sampling_ratio``), K sparse entries (R S^2 g^2 samples x 4 corners, those in the map).
"""

from __future__ import annotations

import functools
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

MIN_ROIS_PER_THREAD = 32
# sampling ratios of the sparse backward: count = ratio^2 a power of two makes w / count exact;
# the presets' 1 and 2, which the self-check covers (the adaptive 0 and the rest: torchvision's)
EXACT_SPARSE_RATIOS = (1, 2)
_POOL: dict[int, ThreadPoolExecutor] = {}

logger = logging.getLogger(__name__)


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


class _RoIAlign(torch.autograd.Function):
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
        grad, args = grad.contiguous(), (shape, size, scale, ratio, aligned)
        if _sparse_usable(ratio):
            grad_feature = _sparse_backward(grad, rois, *args)
        elif workers > 1:
            grad_feature = _parallel_backward(grad, rois, *args, workers)
        else:
            grad_feature = _backward(grad, rois, *args)
        return (grad_feature,) + (None,) * 6


def _bilinear_entries(
    rois: Tensor, shape: tuple[int, ...], size: tuple[int, int], scale: float, ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The backward's scatter as K entries: (feature pixel, output bin, weight / count).

    Every step is torchvision's CPU kernel's in float32 (``roi_align_backward_kernel_impl`` and
    ``bilinear_interpolate_gradient``), vectorised: sample ``y = start + ph * bin + (iy + .5) *
    bin / g``; samples outside ``[-1, H]`` dropped; ``y <= 0`` clamped to 0; the last row /
    column repeated at the far border; weights ``hy * hx``, ``hy * lx``, ``ly * hx``, ``ly * lx``.

    Returns:
        rows int64 [K]: ``b * H * W + y * W + x``; bins int64 [K]: ``(roi * S + ph) * S + pw``;
        weights float32 [K]; in torchvision's order of additions (RoI, ph, pw, iy, ix, corner).
    """
    _, _, height, width = shape
    num, (side_h, side_w), g = len(rois), size, ratio
    offset = 0.5 if aligned else 0.0
    start_x, start_y = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    roi_w, roi_h = rois[:, 3] * scale - offset - start_x, rois[:, 4] * scale - offset - start_y
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    inner = torch.arange(g, dtype=rois.dtype) + 0.5

    def axis(start: Tensor, extent: Tensor, side: int, limit: int):
        """Along one axis, [R, side, g]: valid, low, high, l, h."""
        bin_size = (extent / side)[:, None, None]
        steps = torch.arange(side, dtype=rois.dtype)[None, :, None]
        v = start[:, None, None] + steps * bin_size + inner[None, None, :] * bin_size / g
        valid = ~((v < -1.0) | (v > limit))
        v = torch.where(v <= 0, torch.zeros_like(v), v)
        low = v.long()
        at_end = low >= limit - 1
        low = torch.where(at_end, limit - 1, low)
        high = torch.where(at_end, low, low + 1)
        frac = torch.where(at_end, low.to(v.dtype), v) - low.to(v.dtype)
        return valid, low, high, frac, 1.0 - frac

    vy, y_low, y_high, ly, hy = axis(start_y, roi_h, side_h, height)
    vx, x_low, x_high, lx, hx = axis(start_x, roi_w, side_w, width)

    def along_y(t: Tensor) -> Tensor:  # [R, S_h, g] -> [R, S_h, 1, g, 1]
        return t[:, :, None, :, None]

    def along_x(t: Tensor) -> Tensor:  # [R, S_w, g] -> [R, 1, S_w, 1, g]
        return t[:, None, :, None, :]

    base = (rois[:, 0].long() * (height * width))[:, None, None, None, None]
    y0, y1 = base + along_y(y_low) * width, base + along_y(y_high) * width
    x0, x1 = along_x(x_low), along_x(x_high)
    rows = torch.stack([y0 + x0, y0 + x1, y1 + x0, y1 + x1], -1)  # [R, S_h, S_w, g, g, 4]
    hy, ly, hx, lx = along_y(hy), along_y(ly), along_x(hx), along_x(lx)
    weights = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], -1) / float(g * g)
    bins = torch.arange(num * side_h * side_w).reshape(num, side_h, side_w, 1, 1, 1)
    keep = (along_y(vy) & along_x(vx))[..., None].expand(rows.shape)
    return rows[keep], bins.expand(rows.shape)[keep], weights[keep]


def _sparse_backward(grad, rois, shape, size, scale: float, ratio: int, aligned: bool) -> Tensor:
    """Gradient [B, D, H, W] of the feature map (channels-last strides) from grad [R, D, S, S]:
    one CSR [B H W, R S S] x dense [R S S, D] product of ``_bilinear_entries``."""
    batch, channels, height, width = shape
    rows, bins, weights = _bilinear_entries(rois, shape, size, scale, ratio, aligned)
    order = torch.sort(rows, stable=True).indices  # by pixel, torchvision's order within each
    pixels = batch * height * width
    crow = torch.zeros(pixels + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=pixels), 0, out=crow[1:])
    with warnings.catch_warnings():  # "CSR support is in beta": the self-check vouches for it
        warnings.simplefilter("ignore")
        matrix = torch.sparse_csr_tensor(  # a bin repeats within a row: one entry per sample
            crow, bins[order], weights[order], (pixels, grad.shape[0] * size[0] * size[1]),
            check_invariants=False,
        )  # fmt: skip
    dense = grad.float().permute(0, 2, 3, 1).reshape(-1, channels)  # [R S S, D]
    with torch.autocast("cpu", enabled=False):  # the product has float32 kernels only
        product = matrix @ dense
    return product.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def _sparse_usable(ratio: int) -> bool:
    return ratio in EXACT_SPARSE_RATIOS and sparse_backward_is_exact()


def backward_path(ratio: int, workers: int) -> str:
    """Which backward ``roi_align`` runs for ``sampling_ratio`` on this machine: ``"sparse"``
    (the sparse product; exact where its self-check passed), ``"threaded"`` (torchvision's
    kernel split over ``workers`` threads) or ``"torchvision"`` (one call)."""
    if _sparse_usable(ratio):
        return "sparse"
    return "threaded" if workers > 1 else "torchvision"


@functools.cache
def sparse_backward_is_exact() -> bool:
    """Whether the sparse backward gives torchvision's gradient bit for bit on this build and
    processor (once per process: random RoIs crossing the border, both ``aligned``, ratios 1
    and 2). Runs in float32 with autocast off, whatever the caller's autocast state."""
    with torch.autocast("cpu", enabled=False), torch.no_grad():
        exact = _sparse_matches_torchvision()
    if not exact:
        logger.warning(
            "sparse RoIAlign backward differs from torchvision's on this processor: using "
            "torchvision's kernel (threaded) instead"
        )
    return exact


def _sparse_matches_torchvision() -> bool:
    gen = torch.Generator().manual_seed(0)
    shape, exact = (2, 8, 13, 17), True
    xy = torch.rand(60, 2, generator=gen) * 70 - 8
    wh = torch.rand(60, 2, generator=gen) * 30 + 0.3
    index = torch.randint(2, (60, 1), generator=gen).float()
    rois = torch.cat([index, xy, xy + wh], 1)
    grad = torch.randn(60, 8, 7, 7, generator=gen)
    for ratio in EXACT_SPARSE_RATIOS:
        for aligned in (False, True):
            ours = _sparse_backward(grad, rois, shape, (7, 7), 0.25, ratio, aligned)
            theirs = _backward(grad, rois, shape, (7, 7), 0.25, ratio, aligned)
            exact &= torch.equal(ours.contiguous().view(torch.int32), theirs.view(torch.int32))
    return exact


def _parallel_backward(grad, rois, shape, size, scale, ratio, aligned, workers) -> Tensor:
    """Gradient [B, D, H, W] of the feature map, split by image (B > 1) or by channel; ``grad``
    contiguous."""
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
        [R, D, S, S], bit-identical to torchvision's on every processor; the gradient of
        ``feature`` is too on the threaded path and, where its self-check passed, the sparse one
        (``backward_path``), else within float rounding. bf16 / fp16 features pool in float32
        (the kernels' dtype) and come back in their dtype.
    """
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if feature.device.type != "cpu" or torch.jit.is_scripting() or torch.jit.is_tracing():
        # traced (ONNX export): torchvision's op, whose ONNX symbolic torchvision registers
        return tv_roi_align(feature, rois, size, spatial_scale, sampling_ratio, aligned)
    workers = max(1, min(torch.get_num_threads(), len(rois) // MIN_ROIS_PER_THREAD))
    if feature.dtype != torch.float32:  # float32 CPU kernels; worker threads run without autocast
        pooled = roi_align(feature.float(), rois, size, spatial_scale, sampling_ratio, aligned)
        return pooled.to(feature.dtype)
    if workers < 2 and not (feature.requires_grad and _sparse_usable(sampling_ratio)):
        return tv_roi_align(feature, rois, size, spatial_scale, sampling_ratio, aligned)
    feature = feature.contiguous()
    rois = rois.to(feature.dtype)
    with torch.autocast("cpu", enabled=False):  # float32 in, float32 kernels (main thread too)
        return _RoIAlign.apply(
            feature, rois, size, float(spatial_scale), int(sampling_ratio), bool(aligned), workers
        )
