"""Depthwise k x k convolution with "same" padding: ``nn.Conv2d`` keys and semantics, Triton on
CUDA (``kernels/depthwise_conv_triton.py``), PyTorch elsewhere."""
import torch
import torch.nn as nn

from ._triton import use_triton


class _DepthwiseConvTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, out_dtype):
        from .kernels.depthwise_conv_triton import depthwise_conv
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return depthwise_conv(x, weight, bias, out_dtype)

    @staticmethod
    def backward(ctx, grad):
        from .kernels.depthwise_conv_triton import depthwise_conv, depthwise_conv_weight_grad
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        # stride 1, odd k: the input gradient is the convolution with the flipped kernel
        grad_x = depthwise_conv(grad, weight.flip(-1, -2).contiguous(), None, x.dtype) \
            if ctx.needs_input_grad[0] else None
        grad_w, grad_b = depthwise_conv_weight_grad(grad, x, weight.shape[-1], ctx.has_bias)
        grad_b = grad_b.to(weight.dtype) if grad_b is not None else None
        return grad_x, grad_w.to(weight.dtype), grad_b, None


def depthwise_conv_triton(x, weight, bias=None, out_dtype=None):
    """The Triton path (any device Triton can run on, including its CPU interpreter)."""
    return _DepthwiseConvTriton.apply(x.contiguous(), weight, bias, out_dtype or x.dtype)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels)``, k odd."""

    def __init__(self, channels, kernel_size, bias=True):
        if kernel_size % 2 == 0:
            raise ValueError(f'DepthwiseConv2d: kernel_size must be odd, got {kernel_size}')
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2,
                         groups=channels, bias=bias)

    def forward(self, x):
        if not use_triton(x):
            return super().forward(x)
        if torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        else:
            out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return depthwise_conv_triton(x, self.weight, self.bias, out_dtype)
