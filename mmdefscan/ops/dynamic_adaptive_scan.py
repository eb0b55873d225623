r"""DAMamba's dynamic adaptive scan: per-pixel offsets, bilinear sampling there, then a
one-state selective scan that returns its hidden states.

**Offset prediction network** (official ``Dynamic_Adaptive_Scan.dw_conv`` and ``.offset``). For
the block input :math:`z` (B, C, H, W) and G groups:

.. math::
    o = \mathrm{Linear}\big(\mathrm{GELU}(\mathrm{LN}(\mathrm{DWConv}_{3\times3}(z)))\big)
    \in \mathbb{R}^{B\times H\times W\times 2G},\qquad
    (\Delta x_g, \Delta y_g) = (o_{2g}, o_{2g+1}),

x (width) first, then y (height), as DCNv3 reads them.

**Sampling** (DCNv3 with a 1x1 kernel, unit mask and offset scale 1, exactly as the official
CUDA im2col). Channel c of the value map v belongs to group g = c // (C/G). Output pixel (i, j)
reads the point :math:`p = (p_y, p_x) = (i + \Delta y_g, j + \Delta x_g)` (pixel units, pixel
centres at integers):

.. math::
    \tilde v_c(i, j) = [-1 < p_y < H]\,[-1 < p_x < W]
        \sum_{a \in \{0,1\}} \sum_{b \in \{0,1\}} \omega_a(p_y)\,\omega_b(p_x)\;
        \bar v_c(\lfloor p_y\rfloor + a, \lfloor p_x\rfloor + b),

with :math:`\omega_0(t) = 1 - (t - \lfloor t\rfloor)`, :math:`\omega_1(t) = t - \lfloor t\rfloor`
and :math:`\bar v` equal to v inside the map and 0 outside it (a corner outside reads 0; a point
outside the open box (-1, H) x (-1, W) gives 0). This is ``grid_sample(bilinear, zeros,
align_corners=False)`` at :math:`g_x = (2 p_x + 1)/W - 1`, :math:`g_y = (2 p_y + 1)/H - 1`, which
is defined for sides of one pixel too. It is computed in float32 (float64 for float64 input),
like the kernel's ``opmath`` arithmetic, so float16 and bfloat16 inputs get float32 coordinates;
the result has the dtype of v. The derivative is the exact one, as in DCNv3's backward. On CUDA
without autograd it is one Triton kernel (``kernels/adaptive_sample_triton.py``, the formula
above read from v in its own dtype); with ``TRAIN_KERNEL`` set, also under autograd, with a
Triton backward (no float32 copy of the map, no grid); otherwise :func:`adaptive_sample_ref`.

**State scan** (the official ``selective_scan_cuda_oflex_rh`` call): the selective scan with one
state that returns the state sequence itself,

.. math::
    \Delta_t = \mathrm{softplus}(\delta_t + \delta_{bias}),\qquad
    h_t = e^{\Delta_t A}\,h_{t-1} + \Delta_t B_t u_t \quad (h_{-1} = 0),

i.e. :func:`~mmdefscan.ops.selective_scan_states` (the shared selective scan with C = 1, no D
and no gate), always in float32 (float64 stays float64), whatever the dtype of its inputs.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from ._triton import records_grad, use_triton
from .layer_norm import LayerNorm
from .selective_scan import _compute_dtype

# Whether calls that autograd records take the Triton sampling and its backward (else
# ``grid_sample`` in float32). Off until its speed is measured on a GPU: ``benchmark.py --ab
# mmdefscan.ops.dynamic_adaptive_scan.TRAIN_KERNEL=True`` compares the two (docs/benchmark.md).
TRAIN_KERNEL = False
from .tracing import size_cache


@size_cache(maxsize=64)
def _grid_constants(height, width, dtype, device):
    """Per map size, built once: grid_sample's coordinates of the pixel centres as (x, y)
    (H, W, 1, 2), and the normalised size of one pixel per axis, (2 / W, 2 / H)."""
    def centres(side):
        return (2 * torch.arange(side, dtype=dtype, device=device) + 1) / side - 1
    with torch.inference_mode(False):
        grid = torch.stack(torch.meshgrid(centres(width), centres(height), indexing='xy'), -1)
        scale = torch.stack([torch.full((), 2.0 / side, dtype=dtype, device=device)
                             for side in (width, height)])
    return grid[:, :, None], scale


def adaptive_sample(values, offsets, groups):
    """Sample ``values`` (B, C, H, W) at the pixel plus its group's offset (official DCNv3).

    Args:
        values: (B, C, H, W); channel c is in group c // (C / groups).
        offsets: (B, H, W, 2 * groups), per group (dx, dy) in pixels.
        groups: number of offset groups.

    Returns:
        (B, C, H, W) in the dtype of ``values`` (see the module docstring for the formula).
    """
    batch, channels, height, width = values.shape
    if channels % groups:
        raise ValueError(f'adaptive_sample: {channels} channels are not divisible into '
                         f'{groups} groups')
    if offsets.shape != (batch, height, width, 2 * groups):
        raise ValueError(f'adaptive_sample: offsets of shape {tuple(offsets.shape)} do not fit '
                         f'values {tuple(values.shape)} with {groups} groups (expected '
                         f'{(batch, height, width, 2 * groups)})')
    if values.dtype == torch.float64 or not use_triton(values):
        return adaptive_sample_ref(values, offsets, groups)
    if records_grad(values, offsets):
        if not TRAIN_KERNEL:
            return adaptive_sample_ref(values, offsets, groups)
        return _AdaptiveSample.apply(values.contiguous(), offsets, groups)
    from .kernels.adaptive_sample_triton import adaptive_sample_fwd
    return adaptive_sample_fwd(values.contiguous(), offsets, groups)


class _AdaptiveSample(torch.autograd.Function):
    """The Triton sampling with its Triton backward (``kernels/adaptive_sample_triton.py``)."""

    @staticmethod
    def forward(ctx, values, offsets, groups):
        from .kernels.adaptive_sample_triton import adaptive_sample_fwd
        ctx.save_for_backward(values, offsets)
        ctx.groups = groups
        return adaptive_sample_fwd(values, offsets, groups)

    @staticmethod
    def backward(ctx, grad):
        from .kernels.adaptive_sample_triton import adaptive_sample_bwd
        values, offsets = ctx.saved_tensors
        return (*adaptive_sample_bwd(grad.contiguous(), values, offsets, ctx.groups), None)


def adaptive_sample_ref(values, offsets, groups):
    """The PyTorch path of :func:`adaptive_sample` (``grid_sample`` in fp32; differentiable)."""
    batch, channels, height, width = values.shape
    cdt = _compute_dtype(values.dtype)
    with torch.autocast(values.device.type, enabled=False):
        off = offsets.to(cdt).unflatten(-1, (groups, 2))  # (B, H, W, G, 2)
        centres, scale = _grid_constants(height, width, cdt, values.device)
        # g = (2 (i + d) + 1) / side - 1 = centre + d * 2 / side, for x and y in one operator
        grid = torch.addcmul(centres, off, scale).permute(0, 3, 1, 2, 4)  # (B, G, H, W, 2)
        grid = grid.reshape(batch * groups, height, width, 2)
        sampled = F.grid_sample(
            values.to(cdt).reshape(batch * groups, channels // groups, height, width), grid,
            mode='bilinear', padding_mode='zeros', align_corners=False)
    return sampled.reshape(batch, channels, height, width).to(values.dtype)


class _ToChannelsLast(nn.Module):
    """(B, C, H, W) -> (B, H, W, C): the official ``to_channels_last`` (``dw_conv.1.0``)."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1)


@MODELS.register_module()
class OffsetPredictionNet(nn.Module):
    r"""DAMamba's offset prediction network: one (dx, dy) per pixel and group.

    ``offset(GELU(LN(dwconv3x3(z))))`` (see the module docstring); keys ``dw_conv.0`` (depthwise
    conv), ``dw_conv.1.1`` (LayerNorm, eps 1e-6), ``offset`` (Linear C -> 2G), as the official
    ``Dynamic_Adaptive_Scan``. The offset Linear starts at zero (every point at its pixel).

    Args:
        channels: C.
        groups: G; C must be divisible by G.
        dw_kernel_size: kernel of the depthwise conv (3 in DAMamba).

    Input (B, C, H, W); output (B, H, W, 2G) in the order (dx_0, dy_0, dx_1, dy_1, ...).
    """

    def __init__(self, channels, groups, dw_kernel_size=3):
        super().__init__()
        if groups < 1 or channels % groups:
            raise ValueError(f'{type(self).__name__}: channels ({channels}) must be divisible by '
                             f'groups ({groups})')
        self.channels = channels
        self.groups = groups
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, dw_kernel_size, padding=(dw_kernel_size - 1) // 2,
                      groups=channels),
            # the Triton norm reads the permuted conv output in place (no contiguous copy)
            nn.Sequential(_ToChannelsLast(), LayerNorm(channels, eps=1e-6)),
            nn.GELU())
        self.offset = nn.Linear(channels, 2 * groups)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def predict_offsets(self, z):
        """(B, C, H, W) -> offsets (B, H, W, 2G)."""
        return self.offset(self.dw_conv(z))

    def forward(self, z):
        return self.predict_offsets(z)


@MODELS.register_module()
class DynamicAdaptiveScan(OffsetPredictionNet):
    r"""Dynamic adaptive scan (official ``Dynamic_Adaptive_Scan``): the offset prediction network
    (same parameters and keys) followed by bilinear sampling at the predicted points.

    ``forward(z, v)``: offsets from ``z`` (B, C, H, W), values ``v`` (B, C, H, W) sampled per
    group at (i + dy, j + dx) with the official DCNv3 rules (:func:`adaptive_sample`); returns
    (B, C, H, W) in the dtype of ``v``. Read in raster order, the result is the adaptively
    ordered token sequence that the state scan (:func:`selective_scan_states`) runs over.
    """

    def forward(self, z, v):
        return adaptive_sample(v, self.predict_offsets(z), self.groups)
