"""Depthwise k x k convolution (stride 1, same padding) with a Triton weight gradient on CUDA.

:class:`DepthwiseConv2d` is ``nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)``: the same
parameters, state-dict keys and forward. When it trains on CUDA, its backward takes the input
gradient from PyTorch and the weight and bias gradients from one Triton kernel
(``kernels/depthwise_conv_triton.py``); elsewhere it is the plain module.
``MMDEFSCAN_TRITON_DWCONV=0`` turns this kernel off alone (A/B benchmarks).
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._triton import use_triton


class _DepthwiseConv(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, 1, weight.shape[-1] // 2, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        from .kernels.depthwise_conv_triton import dw_grad_weight
        x, weight = ctx.saved_tensors
        kernel_size = weight.shape[-1]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [kernel_size // 2] * 2, [1, 1], False, [0, 0],
                x.shape[1], [True, False, False])[0]
        grad_weight, grad_bias = dw_grad_weight(x, grad, kernel_size)
        return grad_x, grad_weight, grad_bias if ctx.has_bias else None


def depthwise_conv_triton(x, weight, bias=None):
    """F.conv2d(x, weight, bias, padding=k // 2, groups=C) with the Triton weight gradient; x,
    weight and bias of one dtype (any device Triton runs on, its CPU interpreter included)."""
    channels, kernel_size = x.shape[1], weight.shape[-1]
    if weight.shape != (channels, 1, kernel_size, kernel_size) or kernel_size % 2 == 0:
        raise ValueError(f'depthwise_conv: weight {tuple(weight.shape)} is not an odd k x k '
                         f'kernel per channel of x {tuple(x.shape)}')
    return _DepthwiseConv.apply(x, weight, bias)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=bias)``; on CUDA
    with gradients its weight gradient is Triton's (PyTorch's depthwise weight-gradient kernel
    was 9% of a DefMamba-S training step on the H200)."""

    def __init__(self, dim, kernel_size, bias=True):
        super().__init__(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=bias)

    def forward(self, x):
        if not (use_triton(x) and torch.is_grad_enabled() and self.weight.requires_grad
                and os.environ.get('MMDEFSCAN_TRITON_DWCONV', '1') != '0'):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(x.device.type):  # as autocast casts F.conv2d's arguments
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        return depthwise_conv_triton(x, weight, bias)
