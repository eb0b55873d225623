"""Depthwise k x k convolution (stride 1, padding k // 2) with a Triton path on CUDA.

:class:`DepthwiseConv2d` is an ``nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim)`` (same keys,
init and isinstance checks) whose CUDA forward and backward run
``kernels/depthwise_conv_triton.py`` on maps of ``TRAIN_MIN_NUMEL`` elements or more; elsewhere
(CPU, float64, small maps in training, ``MMDEFSCAN_TRITON=0``) it is ``nn.Conv2d``.
Under autocast the output is in the autocast dtype, as cuDNN's would be; the taps are
accumulated in float32 from the stored input and float32 weights.
"""
import torch
import torch.nn as nn

from ._triton import use_triton

# Training takes the kernels from this many elements of x (inference always); see
# docs/performance.md, round 11.
TRAIN_MIN_NUMEL = 0


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
        dx = dwconv_fwd(dy, weight, None, x.dtype, flip=True) if ctx.needs_input_grad[0] \
            else None
        dw, db = dwconv_wgrad(x, dy, weight.shape[-1])
        return dx, dw.to(weight.dtype), db.to(weight.dtype) if ctx.has_bias else None, None


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
        if x.dtype == torch.float64 or not use_triton(x, TRAIN_MIN_NUMEL):
            return super().forward(x)
        out_dtype = (torch.get_autocast_dtype(x.device.type)
                     if torch.is_autocast_enabled(x.device.type) else x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return depthwise_conv2d_triton(x, self.weight, self.bias, out_dtype)
