"""LayerNorm over the last dim with a Triton path (CUDA) and the PyTorch path (everything else).

:class:`LayerNorm` is an ``nn.LayerNorm`` (same keys, same init, same isinstance checks for
weight-decay rules) whose CUDA forward runs ``kernels/layer_norm_triton.py`` (in training only on
large maps: ``TRAIN_MIN_NUMEL``). Two extras that DefMamba uses on that path:

* ``autocast_output=True``: under autocast the output is in the autocast dtype (it feeds a
  Linear, which would cast it anyway); PyTorch's autocast runs LayerNorm in fp32 and returns fp32,
  so this saves an fp32 write and a cast. The statistics are fp32 either way.
* ``forward(x, scale=..., gelu=True)``: GELU(LN(x * scale)) with a per-(batch, channel) scale,
  fused (the offset network's conv * channel attention -> LN -> GELU).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._triton import use_triton

# Training runs the plain norm's kernel from this many elements of x: below, native LayerNorm's
# forward + backward is faster end to end (host-bound): on an H200, native 0.18-0.42 ms vs
# Triton 0.64-0.78 ms on the Mask R-CNN maps up to 2 x 200 x 336 x 96 (12.9 M elements), from
#   python tools/analysis/bench_kernels.py --map 200 336 --batch 2 --dtype fp32 --only LayerNorm
TRAIN_MIN_NUMEL = 2 ** 24


def layer_norm_ref(x, weight, bias, eps, scale=None, gelu=False):
    """GELU?(LayerNorm(x * scale?)); scale (B, C) broadcast over the token dims of x (B, ..., C)."""
    if scale is not None:
        x = x * scale.view(scale.shape[0], *([1] * (x.dim() - 2)), scale.shape[1])
    y = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    return F.gelu(y) if gelu else y


class _LayerNormTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, scale, eps, gelu, out_dtype):
        from .kernels.layer_norm_triton import layer_norm_fwd
        y, mean, rstd = layer_norm_fwd(x, weight, bias, eps, scale, gelu, out_dtype)
        ctx.save_for_backward(x, weight, bias, scale, mean, rstd)
        ctx.gelu = gelu
        return y

    @staticmethod
    def backward(ctx, dy):
        from .kernels.layer_norm_triton import layer_norm_bwd
        x, weight, bias, scale, mean, rstd = ctx.saved_tensors
        dx, dw, db, ds = layer_norm_bwd(dy, x, weight, bias, mean, rstd, scale, ctx.gelu)
        ds = ds.to(scale.dtype) if scale is not None else None
        return dx, dw.to(weight.dtype), db.to(bias.dtype), ds, None, None, None


def layer_norm_triton(x, weight, bias, eps=1e-5, scale=None, gelu=False, out_dtype=None):
    """The Triton path (any device Triton can run on, including its CPU interpreter)."""
    return _LayerNormTriton.apply(x, weight, bias, scale, eps, gelu, out_dtype)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dim, Triton on CUDA (see the module docstring)."""

    def __init__(self, normalized_shape, eps=1e-5, autocast_output=False):
        super().__init__(normalized_shape, eps=eps)
        self.autocast_output = autocast_output

    def forward(self, x, scale=None, gelu=False):
        # the kernel normalises over the last dim with an affine weight and bias. The fused
        # GELU(LN(x * scale)) takes it at every size: its PyTorch composition keeps two more maps
        # for the backward (the product and the norm's output), +0.3 GiB for DefMamba-T
        plain = scale is None and not gelu
        if (not use_triton(x, TRAIN_MIN_NUMEL if plain else 0)
                or len(self.normalized_shape) != 1 or self.weight is None):
            if plain:
                return super().forward(x)
            return layer_norm_ref(x, self.weight, self.bias, self.eps, scale, gelu)
        if torch.is_autocast_enabled(x.device.type):
            # torch's autocast policy for layer_norm: compute and return fp32
            out_dtype = (torch.get_autocast_dtype(x.device.type) if self.autocast_output
                         else torch.float32)
        else:
            out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return layer_norm_triton(x, self.weight, self.bias, self.eps, scale, gelu, out_dtype)
