"""Small building blocks shared by the backbones."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops._triton import records_grad


class DropPath(nn.Module):
    """Stochastic depth per sample (timm semantics: kept samples are scaled by 1 / keep)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def residual(self, x, y):
        """x + self(y), the sum and the scaled mask in one operator: a block's two residuals
        cost four launches (and autograd nodes) fewer in training; the same random mask."""
        if self.drop_prob == 0.0 or not self.training:
            return x + y
        keep = 1.0 - self.drop_prob
        mask = y.new_empty((y.shape[0],) + (1,) * (y.dim() - 1)).bernoulli_(keep)
        return torch.addcmul(x, y, mask, value=1.0 / keep)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob}'


def batched_matmul(weight, x):
    """weight (M, K) @ x (B, K, N) -> (B, M, N) as one batched GEMM on x as it is laid out.

    ``torch.matmul`` folds this broadcast into one GEMM on x transposed: a transposing copy of x
    and another of the result. Here the weight is broadcast over the batch instead (a stride-0
    view; the GEMM reads x, and strided slices of it, in place)."""
    return torch.bmm(weight.expand(x.shape[0], *weight.shape), x)


class Permute(nn.Module):
    """Module form of ``Tensor.permute`` (keeps the official Sequential indices)."""

    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def stochastic_depth_rates(drop_path_rate, depths):
    """Per-block drop-path rates, linear from 0 over all blocks, split per stage."""
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s:s + d] for s, d in zip(starts, depths)]


class GeluLinear(torch.autograd.Function):
    """linear(GELU(h), weight, bias), keeping only h for the backward: GELU is recomputed there.

    Autograd would keep both h (for GELU) and GELU(h) (for the linear): two 4C-channel maps per
    block. The linear runs in the ambient autocast dtype, and the backward computes in that dtype
    as autograd does (gradients equal the plain composition's)."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        out = F.linear(F.gelu(h), weight, bias)
        ctx.save_for_backward(h, weight)
        ctx.dtype = out.dtype  # the linear's compute dtype (the autocast dtype under autocast)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        grad_out = grad_out.to(ctx.dtype).reshape(-1, grad_out.shape[-1])
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_g = (grad_out @ weight.to(ctx.dtype)).view(h.shape).to(h.dtype)
            grad_h = torch.ops.aten.gelu_backward(grad_g, h)
        if ctx.needs_input_grad[1]:
            gelu = F.gelu(h).to(ctx.dtype).reshape(-1, h.shape[-1])
            grad_weight = (grad_out.t() @ gelu).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0).to(weight.dtype)
        return grad_h, grad_weight, grad_bias


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 on channels-last tokens (the official ``Mlp`` with dropout 0). While
    autograd records, GELU and fc2 run as :class:`GeluLinear`, which keeps one hidden map for
    the backward instead of two; otherwise, and under a JIT trace (MMEngine's FLOP counter sees
    no operator inside an autograd Function), as the plain modules: the same numbers."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        h = self.fc1(x)
        if torch.jit.is_tracing() or not records_grad(h, self.fc2.weight):
            return self.fc2(F.gelu(h))
        return GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)


def stage_dims(dims, depths, name):
    """Per-stage widths: an int ``dims`` doubles every stage (the official convention)."""
    dims = [int(dims * 2 ** i) for i in range(len(depths))] if isinstance(dims, int) else list(dims)
    if len(dims) != len(depths):
        raise ValueError(f'{name}: {len(dims)} dims for {len(depths)} stages')
    return dims
