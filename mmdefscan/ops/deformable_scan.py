r"""DefMamba's deformable scan: deformable points, offset bias and deformable token order.

For a feature map x (B, D, H, W) the offset network predicts o (point offsets, y then x) and q
(order offsets). With the official (half-pixel shifted) reference grid r, in coordinates
normalised for ``grid_sample(align_corners=True)``:

.. math::
    p = r + \tanh(o) / (H-1, W-1),\qquad
    x_{def} = \mathrm{sample}(x, p) + \mathrm{sample}(\mathrm{resize}(T_{rpe}), (k - p)/2),

where k is the official key grid (``linspace(0, H, H)``). The tokens of x_def are then read in
the ascending order of :math:`\tanh(q_l) + r_l` (r_l the 1-D reference). The sort passes the
official "mean gradient" to its keys (:class:`DeformablePathSort`), not the zero derivative.

Sides of one pixel (where the official code divides by zero) use a divisor of 1: a 1-pixel
axis then samples its only pixel, which is the limit of the formula.

On CUDA with Triton the two samples, their sum and the sort-gather of a large map run as one
kernel (``kernels/deform_sample_triton.py``); the code below the Triton branch is the reference.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from ._triton import use_triton
from .depthwise_conv import DepthwiseConv2d
from .layer_norm import LayerNorm
from .tracing import linspace, size_cache, size_max, stable_argsort

# Training takes the Triton path from this many elements of x: on smaller maps the PyTorch path is
# as fast or faster forward + backward. Forward + backward ms, PyTorch / Triton, on the four
# stages of a Mask R-CNN image (H200): 12.9 M 12.7 / 7.1, 6.4 M 4.1 / 4.1, 3.2 M 3.1 / 4.3,
# 1.6 M 3.1 / 3.7, from
#   python tools/analysis/bench_kernels.py --map 200 336 --batch 2 --dtype fp32 --only deformable
TRAIN_MIN_NUMEL = 2 ** 23


@size_cache(maxsize=128)
def _normalised_grid(start_end, count, divisor_count, dtype, device):
    """linspace(start, end, count) / (divisor_count - 1) * 2 - 1, safe for divisor_count == 1.

    Cached per map size: five grids per block and forward were 15 launches of host work. Built
    outside inference mode, so that a grid first made under ``torch.inference_mode`` can still
    be saved for a later backward; callers never write into it."""
    start, end = start_end
    with torch.inference_mode(False):
        return linspace(start, end, count, dtype, device) * (
            2.0 / size_max(divisor_count - 1, 1)) - 1.0


@size_cache(maxsize=128)
def _point_grids(height, width, dtype, device):
    """Constants of the sampling points for one map size, built once: the reference grid as
    (y, x) per pixel (H, W, 2), the offset scale 1 / (side - 1) per axis as (y, x), and half the
    key grid as (x, y) per pixel (H, W, 2). Fills and arithmetic on the device: a tensor made
    from a Python list would be copied with a stream synchronisation."""
    grid = functools.partial(_normalised_grid, dtype=dtype, device=device)
    with torch.inference_mode(False):
        ref_yx = torch.stack(torch.meshgrid(grid((0.5, height - 0.5), height, height),
                                            grid((0.5, width - 0.5), width, width),
                                            indexing='ij'), -1)
        key_half_xy = torch.stack(torch.meshgrid(grid((0, width), width, width),
                                                 grid((0, height), height, height),
                                                 indexing='xy'), -1) * 0.5
        scale_yx = torch.stack([torch.full((), 1.0 / size_max(side - 1, 1), dtype=dtype,
                                           device=device)
                                for side in (height, width)])
    return ref_yx, scale_yx, key_half_xy


class DeformablePathSort(torch.autograd.Function):
    """Sort tokens by keys; backward gives the keys DefMamba's heuristic gradient.

    forward(x (B, D, L), keys (B, L)) -> (x gathered in ascending key order (B, D, L), order (B, L)).
    backward: grad_x is the gather's gradient; grad_keys[b, l] = mean_d(g_sorted[b, d, l] -
    grad_x[b, d, l]) (sorted position l mixed with token l, as the official code does).
    """

    @staticmethod
    def forward(ctx, x, keys):
        order = stable_argsort(keys)
        ctx.save_for_backward(order)
        ctx.mark_non_differentiable(order)
        return torch.gather(x, 2, order[:, None, :].expand_as(x)), order

    @staticmethod
    def backward(ctx, grad_sorted, _grad_order):
        order, = ctx.saved_tensors
        return sort_gradients(grad_sorted, order)


def sort_gradients(grad_sorted, order):
    """The sort's backward: the gather's gradient (un-sorted) and DefMamba's mean key gradient."""
    grad_x = unsort_tokens(grad_sorted, order)
    return grad_x, (grad_sorted - grad_x).mean(1)


def _bias_points(pos):
    """Where the offset bias reads the rpe table for points pos (B, H, W, 2) as (x, y): half the
    key-to-point distance, (key - pos) / 2 computed as key / 2 - pos / 2 (halving is exact, so
    the same numbers)."""
    height, width = pos.shape[1:3]
    return torch.add(_point_grids(height, width, pos.dtype, pos.device)[2], pos, alpha=-0.5)


def unsort_tokens(y_sorted, order):
    """Put y_sorted[..., j] back at token order[:, j] (inverse of the deformable order).

    A scatter, not a gather through the inverse order: its backward keeps only the index,
    where gather's would keep y_sorted (and with it the whole scan output) alive."""
    index = order[:, None, :].expand_as(y_sorted)
    return torch.empty_like(y_sorted).scatter_(2, index, y_sorted)


def inverse_order(order):
    """inv[b, order[b, j]] = j: the sorted position of every token (int32)."""
    positions = torch.arange(order.shape[1], device=order.device, dtype=torch.int32)
    return torch.empty_like(order, dtype=torch.int32).scatter_(
        1, order, positions.expand_as(order))


class ConvOffset(nn.Module):
    """Offset network: depthwise k x k conv gated by channel attention of the input, LN, GELU,
    1x1 conv to ``out_channels`` (official: 3, the point offsets y, x and the order offset).
    ``channel_attention=False`` drops the attention (no ``ca`` module)."""

    def __init__(self, dim, kernel_size, out_channels=3, channel_attention=True):
        super().__init__()
        self.conv1 = DepthwiseConv2d(dim, kernel_size)
        self.ca = nn.Sequential(nn.Linear(dim, dim // 16), nn.GELU(), nn.Linear(dim // 16, dim),
                                nn.Sigmoid()) if channel_attention else None
        self.ln = LayerNorm(dim, autocast_output=True)  # feeds conv2 only
        self.conv2 = nn.Conv2d(dim, out_channels, 1, bias=False)

    def forward(self, x):
        attention = self.ca(x.mean((2, 3))) if self.ca is not None else None
        # GELU(LN(conv1(x) * attention)) in one pass on CUDA; the permutes are views
        x1 = self.ln(self.conv1(x).permute(0, 2, 3, 1), scale=attention, gelu=True)
        # the 1x1 conv as a matmul on the channels-last map, (B, 3, H, W) as a view: cuDNN runs it
        # as NCHW -> NHWC copies around an implicit GEMM, and its weight gradient (3 outputs) is
        # slow (tools/analysis/profile_backbone.py shows it on a Mask R-CNN stage 0)
        return F.linear(x1, self.conv2.weight.flatten(1)).permute(0, 3, 1, 2)


@MODELS.register_module()
class DeformableScan(nn.Module):
    """Deformable points + offset bias + deformable token order (official ``DeformableLayer``).

    Args:
        dim: channels D of the scanned map.
        stage: 0..3; picks the offset conv kernel size 9, 7, 5, 3 (official).
        kernel_size: the offset conv kernel size instead of the stage's.
        points: deformable points; off, every token is read at its reference point (the offset
            network predicts no point offsets).
        tokens: deformable token order; off, the tokens keep raster order (no order offset).
        offset_bias: the offset bias (``rpe_table``); off, no table and no bias.
        channel_attention: the offset network's channel attention.
        Without points and tokens there is no offset network.
    forward(x (B, D, H, W)) -> (tokens in deformable order (B, D, H*W), order (B, H*W)).
    """
    kernel_sizes = (9, 7, 5, 3)

    def __init__(self, dim, stage=0, kernel_size=None, points=True, tokens=True,
                 offset_bias=True, channel_attention=True):
        super().__init__()
        self.points, self.tokens = points, tokens
        offsets = 2 * points + tokens
        self.conv_offset = ConvOffset(
            dim, kernel_size or self.kernel_sizes[stage], offsets, channel_attention) \
            if offsets else None
        if offset_bias:
            self.rpe_table = nn.Parameter(torch.zeros(dim, 7, 7))
            nn.init.trunc_normal_(self.rpe_table, std=0.01)
        else:
            self.register_parameter('rpe_table', None)

    def points_and_keys(self, x):
        """Where the deformable tokens of x (B, D, H, W) are read and in which order: the points
        (B, H, W, 2) as (x, y), normalised for ``grid_sample(align_corners=True)``, and the sort
        keys (B, H*W) whose ascending order is the scan order; float32 (float64 stays)."""
        batch, _, height, width = x.shape
        length = height * width
        # positions and sort keys in float32 (float64 stays): a half-precision grid or key cannot
        # tell neighbouring tokens apart on a detection-size map (fp16 overflows past 65504)
        dtype, device = torch.promote_types(x.dtype, torch.float32), x.device
        offsets = self.conv_offset(x).to(dtype) if self.conv_offset is not None else None

        # sampling points, official reference grid (pixel i + 0.5 normalised by side - 1) plus
        # the offsets scaled by 1 / (side - 1); the conv gives (y, x), grid_sample reads (x, y)
        ref_yx, scale_yx, _ = _point_grids(height, width, dtype, device)
        if self.points:
            offset = offsets[:, :2].tanh().permute(0, 2, 3, 1)  # (B, H, W, 2) as (y, x), a view
            pos = torch.addcmul(ref_yx, offset, scale_yx).flip(-1)
        else:
            pos = ref_yx.flip(-1).expand(batch, -1, -1, -1)
        keys = _normalised_grid((0.5, length - 0.5), length, length, dtype, device)
        if self.tokens:
            keys = offsets[:, -1].tanh().flatten(1) + keys
        else:
            keys = keys.expand(batch, -1)
        return pos, keys

    def forward(self, x):
        return self.sample(x, *self.points_and_keys(x))

    def sample(self, x, pos, keys):
        """The tokens of x (B, D, H, W) read at the points ``pos`` plus the offset bias, in the
        ascending order of ``keys`` (see :meth:`points_and_keys`) -> (tokens, order)."""
        batch, _, height, width = x.shape
        dtype, device = pos.dtype, x.device
        # float64 takes the exact PyTorch path, and so do small maps in training: there the Triton
        # path's backward (35 small operators) costs the host more than PyTorch's atomic adds
        # cost the GPU; the fused kernel adds the offset bias, so a scan without one takes the
        # PyTorch path too
        if use_triton(x, TRAIN_MIN_NUMEL) and dtype == torch.float32 \
                and self.rpe_table is not None:
            key_y = _normalised_grid((0, height), height, height, dtype, device)
            key_x = _normalised_grid((0, width), width, width, dtype, device)
            return sample_and_sort_triton(x, self.rpe_table.to(dtype), pos, keys, key_x, key_y)

        tokens = F.grid_sample(x.to(dtype), pos, mode='bilinear', align_corners=True)
        if self.rpe_table is not None:
            # offset bias: the rpe table resized to the map, read at half the key-to-point
            # distance
            table = resize_table(self.rpe_table.to(dtype), height, width)[None]
            tokens = tokens + F.grid_sample(table.expand(batch, -1, -1, -1), _bias_points(pos),
                                            mode='bilinear', align_corners=True)
        # the tokens go on in x's dtype: fp32 here would promote the whole scan input under autocast
        return DeformablePathSort.apply(tokens.to(x.dtype).flatten(2), keys)

    def extra_repr(self):
        return (f'points={self.points}, tokens={self.tokens}, '
                f'offset_bias={self.rpe_table is not None}')


def resize_table(table, height, width):
    """The rpe table (D, h, w) resized to the map (D, H, W), official: bilinear, no corners
    (``F.interpolate``). Computed as rows @ table @ columns^T with the interpolation's own
    weights (:func:`resize_matrix`): interpolate's backward adds atomically into the 49 cells of
    each channel (serialised atomics, a visible share of a Mask R-CNN iteration in
    tools/analysis/profile_backbone.py); the product's backward is two more small products. In the table's dtype, also under autocast."""
    rows, columns_t = _resize_matrices(height, width, *table.shape[1:], table.dtype, table.device)
    with torch.autocast(table.device.type, enabled=False):
        return torch.matmul(torch.matmul(rows, table), columns_t)


@size_cache(maxsize=64)
def _resize_matrices(height, width, table_h, table_w, dtype, device):
    """(H, h) and (w, W): the resize rows of each axis, built once per map size (outside
    inference mode, so that training may save them)."""
    with torch.inference_mode(False):
        return (resize_matrix(height, table_h, dtype, device),
                resize_matrix(width, table_w, dtype, device).T.contiguous())


def resize_matrix(size, table_size, dtype, device):
    """(size, table_size): resizing one table axis to ``size`` as ``F.interpolate`` (bilinear,
    no corners) does is a product with this matrix; read off F.interpolate applied to the
    identity."""
    eye = torch.eye(table_size, dtype=dtype, device=device)[None, :, :, None]
    return F.interpolate(eye, size=(size, 1), mode='bilinear', align_corners=False)[0, :, :, 0].T


@size_cache(maxsize=32)
def _table_taps(width, height, table_size, dtype, device):
    """Constants of :func:`rpe_table_backward` for one map size, built once: the resize rows of
    the x axis, then of the y axis, then a zero row for taps off the map (W + H + 1, t); the
    first row of each axis, (0, W); the axis sizes (W, H) as integers; half the pixel span of
    each axis, ((W - 1) / 2, (H - 1) / 2). Built by arithmetic on the device: a tensor made from
    a Python list would be copied with a stream synchronisation."""
    rows = torch.cat((resize_matrix(width, table_size, dtype, device),
                      resize_matrix(height, table_size, dtype, device),
                      torch.zeros(1, table_size, dtype=dtype, device=device)))
    axis = torch.arange(2, device=device)
    sizes = axis * (height - width) + width
    return rows, axis * width, sizes, (sizes - 1).to(dtype) / 2


def _table_weights(points, height, width, table_size):
    """For every point (B, H, W, 2) as (x, y) and each axis, grid_sample's two taps (bilinear,
    zero padding, align_corners=True) on the resized table expressed on the table itself:
    weights (B, H, W, 2, t) and their derivatives in the normalised coordinate."""
    rows, first_row, sizes, half_span = _table_taps(width, height, table_size, points.dtype,
                                                    points.device)
    pixel = (points + 1) * half_span
    low = pixel.floor()
    frac = (pixel - low)[..., None]
    low = low.long()

    def tap(index):  # the resize row of each tap, the zero row for a tap off the map
        inside = (index >= 0) & (index < sizes)
        return rows[torch.where(inside, index + first_row, rows.shape[0] - 1)]
    tap_low, tap_high = tap(low), tap(low + 1)
    step = tap_high - tap_low
    return tap_low + step * frac, step * half_span[:, None]


def rpe_table_backward(grad_map, table, points):
    """Gradients of grid_sample(resize_table(table), points) for the un-resized table (D, t, t)
    and for the points (B, H, W, 2) as (x, y), given grad_map (B, D, H, W), all float32.

    A bilinear sample of a bilinearly resized table is a product of one weight row per axis
    with the table, sum_ij wy_i wx_j T[d, i, j], so the table gradient is one matrix product
    over all tokens and the point gradient reads t x t values per token: no atomic adds onto
    the resized table (which PyTorch's two backwards do, and then again onto the t x t table)."""
    batch, dim, height, width = grad_map.shape
    size = table.shape[-1]
    if table.shape[1:] != (size, size):
        raise ValueError(f'rpe_table_backward: table {tuple(table.shape)} is not (D, t, t)')
    weights, slopes = _table_weights(points, height, width, size)
    (weight_x, weight_y), (slope_x, slope_y) = weights.unbind(-2), slopes.unbind(-2)
    grad = grad_map.flatten(2)
    outer = (weight_y[..., :, None] * weight_x[..., None, :]).view(batch, -1, size * size)
    grad_table = torch.bmm(grad, outer).sum(0).view(dim, size, size)
    # d loss / d (wy_i wx_j) per token: (B, H, W, t, t)
    grad_weights = torch.matmul(grad.transpose(1, 2), table.view(dim, -1)).view(
        batch, height, width, size, size)
    grad_y = ((grad_weights * weight_x[..., None, :]).sum(-1) * slope_y).sum(-1)
    grad_x = ((grad_weights * weight_y[..., :, None]).sum(-2) * slope_x).sum(-1)
    return grad_table, torch.stack((grad_x, grad_y), -1)


class _SampleAndSort(torch.autograd.Function):
    """Triton path of the deformable tokens: resize the rpe table, sample, add the offset bias
    and sort (``kernels/deform_sample_triton.py``). Backward: the sort's (un-sort + mean key
    gradient), PyTorch's grid-sampler backward for the map and :func:`rpe_table_backward`."""

    @staticmethod
    def forward(ctx, x, rpe_table, pos, keys, key_x, key_y):
        from .kernels.deform_sample_triton import sample_sort_fwd
        order = torch.argsort(keys, dim=-1, stable=True)
        ctx.save_for_backward(x, rpe_table, pos, order)
        ctx.mark_non_differentiable(order)
        table = resize_table(rpe_table, *x.shape[2:])
        return sample_sort_fwd(x, table, pos, order, key_x, key_y), order

    @staticmethod
    def backward(ctx, grad, _grad_order):
        x, rpe_table, pos, order = ctx.saved_tensors
        batch, dim, height, width = x.shape
        grad_tokens, grad_keys = sort_gradients(grad.float(), order)
        grad_map = grad_tokens.view(batch, dim, height, width)
        # (interpolation 0 = bilinear, padding 0 = zeros, align_corners=True), as the forward
        grad_x, grad_pos = torch.ops.aten.grid_sampler_2d_backward(
            grad_map, x.float(), pos, 0, 0, True, [True, True])
        grad_table, grad_points = rpe_table_backward(grad_map, rpe_table, _bias_points(pos))
        return (grad_x.to(x.dtype), grad_table, grad_pos - 0.5 * grad_points, grad_keys,
                None, None)


def sample_and_sort_triton(x, table, pos, keys, key_x, key_y):
    """x (B, D, H, W), table (D, h, w) the rpe table (resized here), pos (B, H, W, 2) as (x, y),
    keys (B, H*W), key_x (W,), key_y (H,), all but x float32 -> (tokens (B, D, H*W) in x's
    dtype and key order, order)."""
    return _SampleAndSort.apply(x.contiguous(), table.contiguous(), pos.contiguous(), keys,
                                key_x, key_y)
