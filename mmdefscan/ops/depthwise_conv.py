"""Depthwise k x k convolution (stride 1, padding k // 2) with a Triton path on CUDA.

:class:`DepthwiseConv2d` is an ``nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim)`` (same keys,
init and isinstance checks) whose CUDA forward and backward run
``kernels/depthwise_conv_triton.py`` where they were measured to pay (:func:`kernels_pay`);
elsewhere (CPU, float64, ``MMDEFSCAN_TRITON=0``, small kernels or maps) it is ``nn.Conv2d``.
Under autocast the output is in the autocast dtype, as cuDNN's would be; the taps are
accumulated in float32 from the stored input and float32 weights.
"""
import torch
import torch.nn as nn

from ._triton import min_numel, records_grad, use_triton

# The kernels pay for k >= 7 on maps of 8 M elements or more; 3x3 convs and smaller maps are
# launch-bound and lose or tie. Forward + backward ms, PyTorch / Triton, on an H200: the 9x9
# offset conv of Mask R-CNN's stage 0 (2 x 96 x 200 x 336, fp32) 2.94 / 1.66, from
#   python tools/analysis/bench_kernels.py --map 200 336 --batch 2 --dtype fp32 --only depthwise
# but in bf16 at DefMamba-S's training batch (64 x 96 x 56 x 56) 4.58 / 5.21, from
#   python tools/analysis/bench_kernels.py --batch 64 --dtype bf16 --only depthwise
MIN_NUMEL, MIN_KERNEL_SIZE = 2 ** 23, 7


def kernels_pay(x, kernel_size, weight):
    """Whether the Triton path runs: CUDA with Triton on (``use_triton``), float32 or lower,
    a kernel of ``MIN_KERNEL_SIZE`` or more on a map of ``MIN_NUMEL`` elements or more, and in
    training a float32 map (the bf16 training case lost). ``MMDEFSCAN_TRITON_MIN_NUMEL=N``
    replaces the size, as for the other ops; 0 sends every map to the kernels (A/B benchmarks)."""
    if x.dtype == torch.float64 or not use_triton(x):
        return False
    floor = min_numel(MIN_NUMEL)
    if floor == 0:
        return True
    return (kernel_size >= MIN_KERNEL_SIZE and x.numel() >= floor
            and (x.dtype == torch.float32 or not records_grad(x, weight)))


class _DepthwiseConv2dTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, out_dtype):
        from .kernels.depthwise_conv_triton import dwconv_fwd
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return dwconv_fwd(x, weight, bias, out_dtype)

    @staticmethod
    def backward(ctx, dy):
        from .kernels.depthwise_conv_triton import dwconv_fwd, dwconv_wgrad
        x, weight = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = dwconv_fwd(dy, weight, None, x.dtype, flip=True)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:  # not for frozen stages
            dw, db = dwconv_wgrad(x, dy, weight.shape[-1])
            dw, db = dw.to(weight.dtype), db.to(weight.dtype) if ctx.has_bias else None
        return dx, dw, db, None


def depthwise_conv2d_triton(x, weight, bias=None, out_dtype=None):
    """x (B, C, H, W), weight (C, 1, k, k) with k odd, bias (C,) or None -> (B, C, H, W) in
    ``out_dtype`` (default: x's); any device Triton runs on, its CPU interpreter included."""
    kernel_size = weight.shape[-1]
    if weight.shape != (x.shape[1], 1, kernel_size, kernel_size) or kernel_size % 2 == 0:
        raise ValueError(f'depthwise_conv2d_triton: weight {tuple(weight.shape)} is not '
                         f'({x.shape[1]}, 1, k, k) with k odd')
    return _DepthwiseConv2dTriton.apply(x.contiguous(), weight.contiguous(), bias,
                                        out_dtype or x.dtype)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=bias)``, Triton
    on CUDA (see the module docstring)."""

    def __init__(self, dim, kernel_size, bias=True):
        super().__init__(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=bias)

    def forward(self, x):
        if not kernels_pay(x, self.kernel_size[0], self.weight):
            return super().forward(x)
        out_dtype = (torch.get_autocast_dtype(x.device.type)
                     if torch.is_autocast_enabled(x.device.type) else x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return depthwise_conv2d_triton(x, self.weight, self.bias, out_dtype)
